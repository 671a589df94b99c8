//! Which member a request goes to, and whether a member may take requests: the pure
//! lbmethods and stickiness ([`select`]), a member's health with hysteresis ([`member`]),
//! and the members with their live figures, read without a lock on the request path
//! ([`registry`]). Nothing here knows HTTP.

pub mod member;
pub mod registry;
pub mod select;
