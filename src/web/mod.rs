//! The library's face for applications: what an axum or tower app uses to keep its
//! sessions in a deltacast cluster (with the `tower-sessions` feature, a store for
//! tower-sessions).

#[cfg(feature = "tower-sessions")]
pub mod tower_store;
