//! The retry rules (docs/providers.md, "What is retried, and what it costs") as plain
//! functions: what an attempt's ending means for the request ([`after`]), and what that does to
//! the plan and the provider's keys ([`apply_status`]). The proxy hooks call them, and so can
//! any other caller that runs a plan (the analyze fan-out): one copy of the rules.

use super::attempts::Plan;
use super::errors::GatewayError;
use crate::runtime::Runtime;
use http::HeaderMap;
use tokio::time::Instant;

/// How an attempt ended, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The provider answered with this status (its header; nothing has reached the client).
    Status(u16),
    /// Connecting failed: refused, no route, TLS, connect timeout.
    ConnectFailed,
    /// The exchange failed after connecting and before the response reached the client;
    /// `stale`: on a reused pooled connection the provider had closed (and no timer fired).
    Failed { stale: bool },
    /// The gateway's shutdown cut it.
    Shutdown,
    /// Something failed once the response had begun, or on the client's side.
    AfterResponse,
}

/// What happens to the key the attempt used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFate {
    /// Out until its value changes (`401`).
    Disable,
    /// Cooling down for the provider's hint or the default (`429`).
    Rest,
    /// Nothing: only this request moves on (`403`).
    Keep,
}

/// What the request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The response goes to the client as it is.
    Deliver,
    /// Another key of the same provider, for free; `refused`: the provider refused the
    /// gateway's key (a `401`/`403`: the gateway's problem, not the caller's).
    OtherKey { fate: KeyFate, refused: bool },
    /// Another backend, else the next target: one attempt, and the backend is blamed.
    OtherBackend,
    /// The same plan again, for free and blaming no one.
    Again,
    /// Nothing more is tried.
    Stop,
}

/// The rule for an ending. `keyed`: the attempt used a key; `another_possible`: asked only for
/// a `5xx`, whether another attempt could be made (else the provider's `5xx` is relayed).
pub fn after(ending: Ending, keyed: bool, another_possible: impl FnOnce() -> bool) -> Verdict {
    match ending {
        Ending::Status(401) => Verdict::OtherKey {
            fate: if keyed {
                KeyFate::Disable
            } else {
                KeyFate::Keep
            },
            refused: true,
        },
        Ending::Status(403) => Verdict::OtherKey {
            fate: KeyFate::Keep,
            refused: true,
        },
        // A keyless provider's 429 is about the caller's traffic: nothing to rotate, and its
        // Retry-After goes to the client.
        Ending::Status(429) if keyed => Verdict::OtherKey {
            fate: KeyFate::Rest,
            refused: false,
        },
        Ending::Status(500..=599) if another_possible() => Verdict::OtherBackend,
        Ending::Status(_) => Verdict::Deliver,
        Ending::ConnectFailed | Ending::Failed { stale: false } => Verdict::OtherBackend,
        Ending::Failed { stale: true } => Verdict::Again,
        Ending::Shutdown | Ending::AfterResponse => Verdict::Stop,
    }
}

/// Applies a status verdict to the plan and the provider's key ring: the key's fate, the
/// attempt moved on (free for a key, one attempt for a backend). `Deliver` changes nothing.
pub fn apply_status(
    rt: &Runtime,
    plan: &mut Plan,
    verdict: Verdict,
    status: u16,
    headers: &HeaderMap,
    now: Instant,
) {
    let Some(a) = plan.current.as_ref() else {
        return;
    };
    let provider = rt.provider(a.provider);
    match verdict {
        Verdict::OtherKey { fate, refused } => {
            if let Some((i, k)) = &a.key {
                match fate {
                    KeyFate::Disable => provider.keys.disable(*i, k, "unauthorized"),
                    KeyFate::Rest => {
                        provider.keys.cool_down(*i, k, headers, now);
                    }
                    KeyFate::Keep => {}
                }
            }
            let error = refused.then(|| GatewayError::ProviderAuthFailed {
                provider: provider.name.to_string(),
            });
            plan.key_failed(error);
        }
        Verdict::OtherBackend => {
            a.backend.record_error(format!("status {status}"));
            plan.backend_failed(
                GatewayError::BadUpstream {
                    provider: provider.name.to_string(),
                    detail: "it answered with a server error",
                },
                now,
            );
        }
        Verdict::Deliver | Verdict::Again | Verdict::Stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: fn() -> bool = || panic!("only a 5xx asks whether another attempt is possible");

    /// Every row of docs/providers.md's table, in its order.
    #[test]
    fn the_retry_table() {
        // a connection failure; an error or timeout before the response began
        assert_eq!(
            after(Ending::ConnectFailed, true, NEVER),
            Verdict::OtherBackend
        );
        assert_eq!(
            after(Ending::Failed { stale: false }, true, NEVER),
            Verdict::OtherBackend
        );
        // 5xx: another backend or target if another attempt is possible, else relayed
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(
                after(Ending::Status(s), true, || true),
                Verdict::OtherBackend
            );
            assert_eq!(after(Ending::Status(s), true, || false), Verdict::Deliver);
        }
        // 401, 403 or 429: another key, free
        assert_eq!(
            after(Ending::Status(401), true, NEVER),
            Verdict::OtherKey {
                fate: KeyFate::Disable,
                refused: true
            }
        );
        assert_eq!(
            after(Ending::Status(403), true, NEVER),
            Verdict::OtherKey {
                fate: KeyFate::Keep,
                refused: true
            }
        );
        assert_eq!(
            after(Ending::Status(429), true, NEVER),
            Verdict::OtherKey {
                fate: KeyFate::Rest,
                refused: false
            }
        );
        // a reused keep-alive connection the provider had closed: again, free
        assert_eq!(
            after(Ending::Failed { stale: true }, true, NEVER),
            Verdict::Again
        );
        // anything else is relayed
        for s in [200, 201, 204, 301, 400, 404, 409, 413, 422] {
            assert_eq!(
                after(Ending::Status(s), true, NEVER),
                Verdict::Deliver,
                "{s}"
            );
        }
    }

    #[test]
    fn keyless_providers_and_endings_that_stop() {
        // A keyless provider's 429 is the caller's: relayed with its Retry-After.
        assert_eq!(after(Ending::Status(429), false, NEVER), Verdict::Deliver);
        // A keyless provider refusing the gateway is still the gateway's problem.
        assert_eq!(
            after(Ending::Status(401), false, NEVER),
            Verdict::OtherKey {
                fate: KeyFate::Keep,
                refused: true
            }
        );
        assert_eq!(after(Ending::Shutdown, true, NEVER), Verdict::Stop);
        assert_eq!(after(Ending::AfterResponse, true, NEVER), Verdict::Stop);
    }
}
