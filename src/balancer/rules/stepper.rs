//! The attempts of one proxied request, as a pure state machine both ways of forwarding
//! drive: it is told what became of each attempt ([`Outcome`]) and says what to do next
//! ([`Move`]) and what the attempt says of the member's health ([`Verdict`]).
//!
//! The rules: the members are tried in the order given (the pick, then the others); a
//! pooled connection the member closed while it was idle is no failure of the member, the
//! request goes once more to it on a new connection; a member that fails is in error and
//! the request goes to the next one, if that is safe — it never reached the failed one,
//! or its method is idempotent, and its body can be sent again; a member that sends no
//! answer head within the timeout gets 504 and the request is not sent again (it may have
//! acted on it); a client whose own body failed gets its answer and the member no verdict.
//! No member to try: 503; every one tried failed: 502.

use super::Refusal;
use std::time::Duration;

/// What the stepper knows of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its method may be sent twice (see [`super::idempotent`]).
    pub idempotent: bool,
    /// Its body streams from the client: once sent, in part or whole, it cannot go again.
    pub streamed: bool,
    /// It asks to switch protocols (`Connection: upgrade`).
    pub upgrade: bool,
}

impl Request {
    /// A request without a body or upgrade, of an idempotent method (the fast path's).
    pub const BODILESS: Request = Request {
        idempotent: true,
        streamed: false,
        upgrade: false,
    };
}

/// What became of one attempt on a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The head of the member's answer came; `switching`: a 101.
    Answered { switching: bool },
    /// The connection ended before any answer came. `reused`: it was pooled, so the member
    /// may have closed it while it was idle; `reached`: the request may have reached the
    /// member (it was written, in full or in part).
    Closed { reused: bool, reached: bool },
    /// The member failed (no connection, a broken or malformed answer).
    Failed { reached: bool },
    /// No answer head within the member timeout.
    TimedOut(Duration),
    /// The client's body failed (broke, grew too large, stopped coming): its fault, and
    /// this is its answer.
    ClientFailed(Refusal),
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move<M> {
    /// Send the request to this member, on a pooled connection or a new one.
    Send(M),
    /// Send it again to the same member, on a new connection.
    Again,
    /// Pass the member's answer on to the client.
    Pass,
    /// Answer 101 and copy bytes both ways.
    Tunnel,
    /// Answer the client with this one-line answer.
    Answer(Refusal),
}

/// What an attempt says of the member's health, once it is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered.
    Succeeded,
    /// It failed: in error, retried after an interval.
    Failed,
    /// It kept the request waiting past the timeout: an error, but slow is not dead.
    Slow,
    /// Given up for a reason of the client's: as an attempt abandoned.
    Abandoned,
}

/// A move and, when the attempt is over, its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<M> {
    pub verdict: Option<Verdict>,
    pub next: Move<M>,
}

/// The attempts of one request over the members of `order`.
#[derive(Debug)]
pub struct Stepper<I> {
    order: I,
    request: Request,
    /// The member being tried got its one more go on a new connection.
    again: bool,
}

impl<M, I: Iterator<Item = M>> Stepper<I> {
    pub fn new(order: I, request: Request) -> Stepper<I> {
        Stepper {
            order,
            request,
            again: false,
        }
    }

    /// The first move: the first member, or 503 when there is none.
    pub fn start(&mut self) -> Move<M> {
        match self.order.next() {
            Some(member) => Move::Send(member),
            None => Move::Answer(Refusal::NoMember),
        }
    }

    /// What to do after an attempt ended with `outcome`.
    pub fn after(&mut self, outcome: Outcome) -> Decision<M> {
        let reached = match outcome {
            Outcome::Answered { switching: false } => {
                return self.over(Verdict::Succeeded, Move::Pass);
            }
            Outcome::Answered { switching: true } if self.request.upgrade => {
                return self.over(Verdict::Succeeded, Move::Tunnel);
            }
            // An unrequested 101: the member broke the exchange (RFC 9110 §15.2.2).
            Outcome::Answered { switching: true } => true,
            Outcome::Closed { reused, reached } => {
                if reused && !self.again && self.may_send_again(reached) {
                    self.again = true;
                    return Decision {
                        verdict: None,
                        next: Move::Again,
                    };
                }
                reached
            }
            Outcome::Failed { reached } => reached,
            Outcome::TimedOut(after) => {
                return self.over(Verdict::Slow, Move::Answer(Refusal::MemberTimedOut(after)));
            }
            Outcome::ClientFailed(answer) => {
                return self.over(Verdict::Abandoned, Move::Answer(answer));
            }
        };
        if !self.may_send_again(reached) {
            return self.over(Verdict::Failed, Move::Answer(Refusal::MemberFailed));
        }
        self.again = false;
        let next = match self.order.next() {
            Some(member) => Move::Send(member),
            None => Move::Answer(Refusal::NoAnswer),
        };
        self.over(Verdict::Failed, next)
    }

    /// Whether the request may be sent once more after an attempt that `reached` the
    /// member or not: its body is still there, and it either never got there or may be
    /// sent twice.
    fn may_send_again(&self, reached: bool) -> bool {
        let body_left = !(self.request.streamed && reached);
        body_left && (!reached || self.request.idempotent)
    }

    fn over(&self, verdict: Verdict, next: Move<M>) -> Decision<M> {
        Decision {
            verdict: Some(verdict),
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Request = Request::BODILESS;
    const POST: Request = Request {
        idempotent: false,
        streamed: false,
        upgrade: false,
    };
    const UPLOAD: Request = Request {
        idempotent: true,
        streamed: true,
        upgrade: false,
    };
    const T: Duration = Duration::from_secs(60);

    fn stepper<'a>(
        members: &'a [&'static str],
        request: Request,
    ) -> Stepper<impl Iterator<Item = &'static str> + 'a> {
        Stepper::new(members.iter().copied(), request)
    }

    fn failed(next: Move<&'static str>) -> Decision<&'static str> {
        Decision {
            verdict: Some(Verdict::Failed),
            next,
        }
    }

    #[test]
    fn no_member_gives_503_and_an_answer_is_passed_on_as_a_success() {
        assert_eq!(stepper(&[], GET).start(), Move::Answer(Refusal::NoMember));
        let mut s = stepper(&["a", "b"], GET);
        assert_eq!(s.start(), Move::Send("a"));
        assert_eq!(
            s.after(Outcome::Answered { switching: false }),
            Decision {
                verdict: Some(Verdict::Succeeded),
                next: Move::Pass
            }
        );
    }

    #[test]
    fn a_failed_member_is_followed_by_the_next_and_the_last_failure_gives_502() {
        let mut s = stepper(&["a", "b", "c"], GET);
        assert_eq!(s.start(), Move::Send("a"));
        let broken = Outcome::Failed { reached: true };
        assert_eq!(s.after(broken), failed(Move::Send("b")));
        assert_eq!(
            s.after(Outcome::Failed { reached: false }),
            failed(Move::Send("c"))
        );
        assert_eq!(s.after(broken), failed(Move::Answer(Refusal::NoAnswer)));
    }

    #[test]
    fn a_stale_pooled_connection_gets_one_more_go_on_a_new_one_without_a_verdict() {
        let mut s = stepper(&["a", "b"], GET);
        s.start();
        let stale = Outcome::Closed {
            reused: true,
            reached: true,
        };
        assert_eq!(
            s.after(stale),
            Decision {
                verdict: None,
                next: Move::Again
            }
        );
        // Closed again, on the new connection: that is the member's failure.
        let fresh_closed = Outcome::Closed {
            reused: false,
            reached: true,
        };
        assert_eq!(s.after(fresh_closed), failed(Move::Send("b")));
        // The next member has its own one more go.
        assert_eq!(s.after(stale).next, Move::Again);
        assert_eq!(s.after(stale), failed(Move::Answer(Refusal::NoAnswer)));
        // A new connection that closes is a failure at once.
        let mut s = stepper(&["a"], GET);
        s.start();
        assert_eq!(
            s.after(fresh_closed),
            failed(Move::Answer(Refusal::NoAnswer))
        );
    }

    #[test]
    fn a_request_that_may_have_run_is_not_sent_again_unless_idempotent() {
        let mut s = stepper(&["a", "b"], POST);
        s.start();
        assert_eq!(
            s.after(Outcome::Failed { reached: true }),
            failed(Move::Answer(Refusal::MemberFailed))
        );
        // One that never got there goes to the next member, whatever its method.
        let mut s = stepper(&["a", "b"], POST);
        s.start();
        assert_eq!(
            s.after(Outcome::Failed { reached: false }),
            failed(Move::Send("b"))
        );
        // A stale connection it was written on: not again either.
        let mut s = stepper(&["a", "b"], POST);
        s.start();
        let written = Outcome::Closed {
            reused: true,
            reached: true,
        };
        assert_eq!(
            s.after(written),
            failed(Move::Answer(Refusal::MemberFailed))
        );
        let mut s = stepper(&["a", "b"], POST);
        s.start();
        let unsent = Outcome::Closed {
            reused: true,
            reached: false,
        };
        assert_eq!(s.after(unsent).next, Move::Again);
    }

    #[test]
    fn a_streamed_body_once_sent_cannot_go_again() {
        let mut s = stepper(&["a", "b"], UPLOAD);
        s.start();
        assert_eq!(
            s.after(Outcome::Failed { reached: true }),
            failed(Move::Answer(Refusal::MemberFailed))
        );
        let mut s = stepper(&["a", "b"], UPLOAD);
        s.start();
        assert_eq!(
            s.after(Outcome::Failed { reached: false }),
            failed(Move::Send("b"))
        );
    }

    #[test]
    fn a_member_too_slow_gets_504_and_the_request_is_not_sent_again() {
        let mut s = stepper(&["a", "b"], GET);
        s.start();
        assert_eq!(
            s.after(Outcome::TimedOut(T)),
            Decision {
                verdict: Some(Verdict::Slow),
                next: Move::Answer(Refusal::MemberTimedOut(T))
            }
        );
    }

    #[test]
    fn a_client_whose_body_failed_gets_its_answer_and_the_member_no_verdict() {
        let mut s = stepper(&["a", "b"], UPLOAD);
        s.start();
        assert_eq!(
            s.after(Outcome::ClientFailed(Refusal::ClientTimedOut(T))),
            Decision {
                verdict: Some(Verdict::Abandoned),
                next: Move::Answer(Refusal::ClientTimedOut(T))
            }
        );
    }

    #[test]
    fn a_101_tunnels_when_asked_for_and_is_a_failure_when_not() {
        let switching = Outcome::Answered { switching: true };
        let mut s = stepper(
            &["a"],
            Request {
                upgrade: true,
                ..GET
            },
        );
        s.start();
        assert_eq!(
            s.after(switching),
            Decision {
                verdict: Some(Verdict::Succeeded),
                next: Move::Tunnel
            }
        );
        let mut s = stepper(&["a", "b"], GET);
        s.start();
        assert_eq!(s.after(switching), failed(Move::Send("b")));
        let mut s = stepper(&["a", "b"], POST);
        s.start();
        assert_eq!(
            s.after(switching),
            failed(Move::Answer(Refusal::MemberFailed))
        );
    }
}
