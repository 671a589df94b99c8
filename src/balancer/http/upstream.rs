//! What forwarding a request reads on one worker, whichever way it goes: the members, the
//! worker's own connections to them, and the stickiness rule that matches a request to
//! a member. Handed down by the worker to the fast path and the hyper path alike.

use std::sync::Arc;
use std::time::Instant;

use crate::balancer::choice::registry::{Order, Registry};
use crate::balancer::choice::select::Stickiness;
use crate::balancer::http::figures::{FiguresSlot, WorkerFigures};
use crate::balancer::http::pool::Pool;
use crate::balancer::rules::sticky;

pub struct Upstream {
    pub registry: Arc<Registry>,
    /// This worker's connections to the members.
    pub pool: Arc<Pool>,
    pub sticky: sticky::Rule,
    /// This worker's figures.
    pub figures: FiguresSlot,
}

impl Upstream {
    /// The members to try for a request that says this about where it belongs, best first.
    pub fn order(&self, stickiness: &Stickiness<'_>) -> Order<'_> {
        self.registry.order(stickiness, Instant::now())
    }

    /// What this worker's requests count.
    pub fn figures(&self) -> &WorkerFigures {
        self.figures.get()
    }
}
