//! The built-in HTTP balancer, in the style of Apache mod_proxy_balancer. So far its pure
//! parts: the choice of a member ([`select`]) and a member's health with hysteresis
//! ([`member`]); the proxy, discovery and the manager page build on them.

pub mod member;
pub mod select;
