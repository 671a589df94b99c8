//! The built-in HTTP balancer, in the style of Apache mod_proxy_balancer. This part is the
//! pure choice of a member ([`select`]); the proxy, the member states and the manager page
//! build on it.

pub mod member;
pub mod select;
