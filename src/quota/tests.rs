use super::memory::MemoryStore;
use super::window::{Windows, DAY_MS, MINUTE_MS};
use super::*;
use std::sync::Arc;

fn limits(rpm: Option<u64>, tpm: Option<u64>, tpd: Option<u64>) -> Limits {
    Limits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        tokens_per_day: tpd,
        micro_usd_per_day: None,
    }
}

fn part(rule: &str, scope: Scope, limits: Limits, ask: Ask) -> Part {
    Part {
        rule: Arc::from(rule),
        scope,
        limits,
        ask,
        taken: Taken::default(),
    }
}

fn alice() -> Scope {
    Scope::Subject(Arc::from("alice"))
}

fn ask(tokens: u64, needed: u64) -> Ask {
    Ask {
        tokens,
        tokens_needed: needed,
        micro_usd: 0,
        micro_usd_needed: 0,
    }
}

const T0: u64 = 1_700_000_000_000 / DAY_MS * DAY_MS + 10 * MINUTE_MS;

#[test]
fn requests_per_minute_admits_the_limit_then_the_next_minute() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    let mut ps = [part("r", alice(), limits(Some(2), None, None), ask(0, 0))];
    assert!(matches!(m.reserve(&mut ps, w), Checked::Admitted(_)));
    let Checked::Admitted(c) = m.reserve(&mut ps, w) else {
        panic!("second fits")
    };
    assert_eq!(c[0].requests, 2);
    assert_eq!(
        m.reserve(&mut ps, w),
        Checked::Over {
            part: 0,
            kind: LimitKind::RequestsPerMinute,
            counts: c[0]
        }
    );
    // The last millisecond of the minute still counts; the next minute starts from zero.
    assert!(matches!(
        m.reserve(&mut ps, Windows::at(T0 + MINUTE_MS - 1)),
        Checked::Over { .. }
    ));
    assert!(matches!(
        m.reserve(&mut ps, Windows::at(T0 + MINUTE_MS)),
        Checked::Admitted(_)
    ));
}

#[test]
fn all_or_nothing_over_several_rules() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    let roomy = part("roomy", alice(), limits(Some(100), None, None), ask(0, 0));
    let tight = part(
        "tight",
        Scope::Shared,
        limits(Some(1), None, None),
        ask(0, 0),
    );
    let mut ps = [roomy.clone(), tight.clone()];
    assert!(matches!(m.reserve(&mut ps, w), Checked::Admitted(_)));
    let over = m.reserve(&mut ps, w);
    assert!(matches!(over, Checked::Over { part: 1, .. }), "{over:?}");
    // The refused reservation left the roomy rule untouched.
    assert_eq!(m.counts(&roomy.rule, &alice(), w).requests, 1);
}

#[test]
fn an_estimate_shrinks_to_the_room_left_but_never_below_what_is_needed() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    // 1000 tokens per minute; each request estimates 1200 (its input 200 + a default 1000).
    let mut ps = [part(
        "t",
        alice(),
        limits(None, Some(1000), None),
        ask(1200, 200),
    )];
    let Checked::Admitted(c) = m.reserve(&mut ps, w) else {
        panic!("a first request fits, whatever the default estimate")
    };
    assert_eq!(
        (c[0].tokens_minute, ps[0].taken.tokens_minute),
        (1000, 1000)
    );
    // It used 300: the rest goes back.
    m.settle(&ps, w, Some((300, 0)));
    assert_eq!(m.counts(&ps[0].rule, &alice(), w).tokens_minute, 300);
    let Checked::Admitted(c) = m.reserve(&mut ps, w) else {
        panic!("700 left, 200 needed")
    };
    assert_eq!((c[0].tokens_minute, ps[0].taken.tokens_minute), (1000, 700));
    m.settle(&ps, w, Some((250, 0)));
    let Checked::Admitted(_) = m.reserve(&mut ps, w) else {
        panic!("450 left, 200 needed")
    };
    m.settle(&ps, w, Some((400, 0)));
    // 950 used: 50 left, 200 needed.
    assert!(matches!(
        m.reserve(&mut ps, w),
        Checked::Over {
            kind: LimitKind::TokensPerMinute,
            ..
        }
    ));
}

#[test]
fn giving_back_a_reservation_restores_the_request_and_its_tokens() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    let mut ps = [part(
        "g",
        alice(),
        limits(Some(1), Some(500), Some(5000)),
        ask(100, 100),
    )];
    assert!(matches!(m.reserve(&mut ps, w), Checked::Admitted(_)));
    m.settle(&ps, w, None);
    assert_eq!(m.counts(&ps[0].rule, &alice(), w), Counts::default());
    // A settlement after its minute has ended leaves the new minute alone, but the day counts.
    assert!(matches!(m.reserve(&mut ps, w), Checked::Admitted(_)));
    let later = Windows::at(T0 + MINUTE_MS);
    assert!(matches!(m.reserve(&mut ps, later), Checked::Admitted(_)));
    m.settle(&ps, w, Some((40, 0)));
    let c = m.counts(&ps[0].rule, &alice(), later);
    assert_eq!((c.requests, c.tokens_minute, c.tokens_day), (1, 100, 140));
}

#[test]
fn days_are_utc_days() {
    let m = MemoryStore::default();
    let end_of_day = Windows::at(T0 / DAY_MS * DAY_MS + DAY_MS - 1);
    let mut ps = [part(
        "d",
        alice(),
        limits(None, None, Some(100)),
        ask(100, 100),
    )];
    assert!(matches!(
        m.reserve(&mut ps, end_of_day),
        Checked::Admitted(_)
    ));
    assert!(matches!(
        m.reserve(&mut ps, end_of_day),
        Checked::Over { .. }
    ));
    let next_day = Windows::at(end_of_day.now_ms + 1);
    assert!(matches!(m.reserve(&mut ps, next_day), Checked::Admitted(_)));
}

#[test]
fn a_request_that_can_never_fit_is_told_so_before_the_store() {
    let d = Demand {
        input: 50,
        output: 500,
        output_explicit: true,
        pricing: None,
    };
    assert_eq!(
        d.ask(&limits(None, Some(100), None)),
        Err((LimitKind::TokensPerMinute, 100))
    );
    let defaulted = Demand {
        output_explicit: false,
        ..d.clone()
    };
    let a = defaulted.ask(&limits(None, Some(100), None)).unwrap();
    assert_eq!((a.tokens, a.tokens_needed), (550, 50));
    let p = PricingSpec {
        input_per_million: 1_000_000.0,
        output_per_million: 1_000_000.0,
        cached_input_per_million: None,
    };
    let priced = Demand {
        pricing: Some(&p),
        ..d
    };
    let cost_limited = Limits {
        micro_usd_per_day: Some(100),
        ..Limits::default()
    };
    assert_eq!(
        priced.ask(&cost_limited),
        Err((LimitKind::CostPerDay, 100)),
        "550 micro-dollars needed"
    );
}

#[test]
fn concurrent_reservations_admit_exactly_the_budget() {
    let m = Arc::new(MemoryStore::default());
    let w = Windows::at(T0);
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (m, admitted) = (m.clone(), admitted.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    // Each thread also has a rule of its own, on various shards.
                    let own = Scope::Subject(Arc::from(format!("t{t}-{i}")));
                    let mut ps = [
                        part("own", own, limits(Some(10), None, None), ask(0, 0)),
                        part(
                            "all",
                            Scope::Shared,
                            limits(Some(100), None, None),
                            ask(0, 0),
                        ),
                    ];
                    if let Checked::Admitted(_) = m.reserve(&mut ps, w) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 100);
}

#[test]
fn headroom_reports_the_tightest_rule() {
    let w = Windows::at(T0 + 15_000);
    let mut h = Headroom::default();
    let used = Counts {
        requests: 5,
        tokens_minute: 100,
        tokens_day: 0,
        micro_usd_day: 0,
    };
    h.add(&limits(Some(10), Some(1000), None), &used, &w);
    h.add(&limits(Some(60), None, Some(500)), &used, &w);
    let r = h.requests.unwrap();
    assert_eq!((r.limit, r.remaining), (10, 5));
    assert_eq!(r.reset_at_ms - w.now_ms, 45_000);
    let t = h.tokens.unwrap();
    assert_eq!(
        (t.limit, t.remaining),
        (500, 500),
        "the day rule has more room left"
    );
    let mut h2 = Headroom::default();
    h2.add(
        &limits(None, None, Some(50)),
        &Counts {
            tokens_day: 40,
            ..used
        },
        &w,
    );
    assert_eq!(h2.tokens.unwrap().remaining, 10);
    assert!(h2.requests.is_none());
}

#[test]
fn spending_lists_the_top_callers_of_the_day() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    let bob = Scope::ApiKey(Arc::from("bob"));
    for (s, tokens, micro) in [(alice(), 10, 5), (bob.clone(), 99, 1), (alice(), 10, 5)] {
        m.record_spend(
            &s,
            w,
            Spend {
                requests: 1,
                tokens,
                micro_usd: micro,
            },
        );
    }
    let top = m.top(5, w);
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].0, alice(), "by cost first");
    assert_eq!(
        top[0].1,
        Spend {
            requests: 2,
            tokens: 20,
            micro_usd: 10
        }
    );
    assert_eq!(m.spend(&bob, Windows::at(T0 + DAY_MS)), Spend::default());
}

#[test]
fn callers_of_earlier_days_are_forgotten_as_a_new_day_starts() {
    let m = MemoryStore::default();
    let w = Windows::at(T0);
    for i in 0..1000 {
        let who = Scope::Subject(Arc::from(format!("u{i}")));
        let mut ps = [part("r", who, limits(Some(10), None, None), ask(0, 0))];
        assert!(matches!(m.reserve(&mut ps, w), Checked::Admitted(_)));
    }
    assert_eq!(m.buckets_held(), 1000);
    // The next day, writes to every shard forget yesterday's callers.
    let tomorrow = Windows::at(T0 + DAY_MS);
    for i in 0..1000 {
        let who = Scope::Subject(Arc::from(format!("v{i}")));
        let mut ps = [part("r", who, limits(Some(10), None, None), ask(0, 0))];
        m.reserve(&mut ps, tomorrow);
    }
    assert_eq!(m.buckets_held(), 1000, "only today's callers are held");
}
