//! The `deadline` policy: late model binding on the shared executor, aiming at the optimum's
//! model mix for the load it measures, with each request's own deadline as the guard.
//!
//! Pure functions of what a worker knows when it takes a request; no clocks, threads or models,
//! so every decision is unit-tested with fixed numbers.
//!
//! # How it chooses
//! 1. **The backlog's share.** Every request still to start — this one and the `behind` queued
//!    after it — must finish before the newest one's deadline. The workers have
//!    `workers × target × slack_newest` of time for them, minus the work already running on the
//!    other workers; each request's share, less the per-request work beside inference
//!    (decode, resize), is the inference budget `B`. This is the decode-aware optimum's
//!    `k·T/N − o` read off the live queue instead of a client count: under a closed loop with
//!    N clients the queue holds N − k requests, and `B` tends to `k·target·T/N − o`.
//! 2. **The optimum's mix.** On the upper convex hull of (cost, accuracy) the best mean accuracy
//!    for a mean cost `B` mixes the two hull neighbours around `B` (Proteus' model-mix, re-solved
//!    per request). A request takes the dearer neighbour with probability
//!    `(B − c_low)/(c_high − c_low)` (`dither` is that uniform draw), so the mean cost equals `B`
//!    instead of rounding down to the cheaper model every time — which is what left 20 % of the
//!    optimum's accuracy unused before.
//! 3. **The request's own deadline** (SuperServe-style slack guard): the pick moves down the hull
//!    until its cost fits what is left of this request's own `target × bound`.
//! 4. **Shedding.** When even the cheapest model cannot finish before the request's (full)
//!    deadline and other requests wait behind it, the request is answered `overloaded` at once:
//!    running it would only make those late too. This only happens past saturation. A request
//!    with nobody behind it is run on the cheapest model even if late: refusing it would free
//!    the cores for no one.
//!
//! # The target and its equilibrium
//! `target` (α) scales T into the latency the policy aims at, leaving room for the tail. It is
//! learned by [`next_target`], a quantile tracker: down by `STEP` after a request slower than
//! `LATE_AT × T`, up by `STEP × MISS_RATE / (1 − MISS_RATE)` after any other. The expected log
//! change is zero when P(latency > LATE_AT × T) = MISS_RATE (to first order in STEP), so α settles
//! where 99.5 % of requests finish within 98 % of T whatever the load, the machine or the ladder —
//! nothing here is tuned to one of them. Under a closed loop the mean latency is ≈ α·T (the
//! workers are never idle), so α is the fraction of the optimum's budget the policy spends.

/// One rung as the policy sees it: its current cost estimate and its declared accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rung {
    pub cost_us: f64,
    pub accuracy: f64,
}

/// What a worker knows when it takes a request.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Ladder order, most accurate first.
    pub rungs: &'a [Rung],
    /// Per-request work beside inference still ahead of each queued request (decode, resize), µs.
    pub overhead_us: f64,
    /// Work beside inference still ahead of *this* request before its inference starts, µs.
    pub own_overhead_us: f64,
    /// This request's bound (T, or its own deadline) and how long it has waited, µs.
    pub bound_us: f64,
    pub waited_us: f64,
    /// Requests queued behind this one.
    pub behind: usize,
    /// Time left before the newest queued request's deadline (this request's when none), µs.
    pub newest_slack_us: f64,
    /// Inference work still to run on the other workers, µs.
    pub busy_us: f64,
    pub workers: usize,
    /// α, from [`next_target`].
    pub target: f64,
    /// A uniform draw in [0, 1) for the mix.
    pub dither: f64,
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Run { rung: usize, estimate_us: f64 },
    /// Even the cheapest rung would finish after the deadline, and others wait: answer `overloaded` now.
    Shed,
}

/// Indices of the upper convex hull of (cost, accuracy), cheapest first. Dominated rungs
/// (dearer and no more accurate) and rungs under a chord between two others are left out: a mix
/// of their neighbours is more accurate for the same mean cost.
pub fn hull(rungs: &[Rung], out: &mut Vec<usize>) {
    hull_of(rungs.len(), |i| rungs[i].cost_us, |i| rungs[i].accuracy, out);
}

/// [`hull`] over any `n` points given by their cost and accuracy, into `out` (no allocation once
/// `out` has room for `n`). The experiment's optimum reads the same hull.
pub fn hull_of(n: usize, cost: impl Fn(usize) -> f64, accuracy: impl Fn(usize) -> f64, out: &mut Vec<usize>) {
    out.clear();
    out.extend((0..n).filter(|&i| cost(i).is_finite() && accuracy(i).is_finite()));
    // Cheapest first; among equal costs the most accurate first, so it is the one kept.
    out.sort_unstable_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(accuracy(b).total_cmp(&accuracy(a))));
    // Andrew's monotone chain, upper half, in place: the hull so far is out[..w], and w never
    // passes the read position.
    let mut w = 0;
    for r in 0..out.len() {
        let p = out[r];
        if w > 0 && accuracy(p) <= accuracy(out[w - 1]) {
            continue; // costs at least as much, no more accurate
        }
        // Pop while the last hull point lies on or under the chord from its predecessor to p.
        while w >= 2 {
            let (a, b) = (out[w - 2], out[w - 1]);
            let cross = (cost(b) - cost(a)) * (accuracy(p) - accuracy(a)) - (accuracy(b) - accuracy(a)) * (cost(p) - cost(a));
            if cross >= 0.0 {
                w -= 1;
            } else {
                break;
            }
        }
        out[w] = p;
        w += 1;
    }
    out.truncate(w);
}

/// The inference budget for one request from the backlog's share (step 1 above), µs.
pub fn share_budget(v: &View) -> f64 {
    let time = v.workers.max(1) as f64 * v.target * v.newest_slack_us - v.busy_us;
    time / (v.behind + 1) as f64 - v.overhead_us
}

/// Chooses the rung for one request (steps 1–4 above). `hull` is [`hull`] of `v.rungs`.
pub fn choose(v: &View, hull: &[usize]) -> Decision {
    let Some(&cheapest) = hull.first() else {
        return Decision::Run { rung: 0, estimate_us: v.waited_us };
    };
    let cost = |i: usize| v.rungs[i].cost_us;
    let run = |i: usize| Decision::Run { rung: i, estimate_us: v.waited_us + v.own_overhead_us + cost(i) };
    if v.behind > 0 && v.waited_us + v.own_overhead_us + cost(cheapest) > v.bound_us {
        return Decision::Shed;
    }
    let budget = share_budget(v);
    // Position on the hull: the dearest point within the budget, and maybe its dearer neighbour.
    let within = hull.iter().rposition(|&i| cost(i) <= budget);
    let mut pos = match within {
        None => 0,
        Some(j) if j + 1 == hull.len() => j,
        Some(j) => {
            let (lo, hi) = (cost(hull[j]), cost(hull[j + 1]));
            if v.dither < (budget - lo) / (hi - lo) {
                j + 1
            } else {
                j
            }
        }
    };
    // The request's own deadline caps the pick.
    let own = v.target * v.bound_us - v.waited_us - v.own_overhead_us;
    while pos > 0 && cost(hull[pos]) > own {
        pos -= 1;
    }
    run(hull[pos])
}

/// Latency above `LATE_AT × T` counts as late for the target's tracker.
pub const LATE_AT: f64 = 0.98;
/// The share of requests allowed to be late at equilibrium.
pub const MISS_RATE: f64 = 0.005;
/// Relative step down after a late request.
pub const STEP: f64 = 0.02;
/// Where α starts, and its range. It starts below 1 because the first seconds under load are
/// when the cost estimates are least settled.
pub const INITIAL_TARGET: f64 = 0.85;
pub const TARGET_RANGE: (f64, f64) = (0.2, 1.0);

/// α after one answered request of the given latency and bound (see the module comment for
/// the equilibrium).
pub fn next_target(target: f64, latency_us: f64, bound_us: f64) -> f64 {
    let next = if latency_us > LATE_AT * bound_us { target * (1.0 - STEP) } else { target * (1.0 + STEP * MISS_RATE / (1.0 - MISS_RATE)) };
    next.clamp(TARGET_RANGE.0, TARGET_RANGE.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rungs(pts: &[(f64, f64)]) -> Vec<Rung> {
        pts.iter().map(|&(ms, accuracy)| Rung { cost_us: ms * 1000.0, accuracy }).collect()
    }

    /// A ladder like the default one's shape: most accurate first.
    fn ladder() -> Vec<Rung> {
        rungs(&[(12.0, 70.9), (7.5, 68.4), (3.4, 63.3), (3.6, 60.0), (1.8, 59.1), (1.1, 56.3), (0.4, 41.5)])
    }

    fn view<'a>(r: &'a [Rung]) -> View<'a> {
        View {
            rungs: r,
            overhead_us: 500.0,
            own_overhead_us: 50.0,
            bound_us: 50_000.0,
            waited_us: 0.0,
            behind: 0,
            newest_slack_us: 50_000.0,
            busy_us: 0.0,
            workers: 2,
            target: 0.9,
            dither: 0.5,
        }
    }

    fn rung(d: Decision) -> usize {
        match d {
            Decision::Run { rung, .. } => rung,
            Decision::Shed => panic!("shed"),
        }
    }

    fn hull_of(r: &[Rung]) -> Vec<usize> {
        let mut h = Vec::new();
        hull(r, &mut h);
        h
    }

    #[test]
    fn hull_drops_dominated_and_concave_rungs() {
        // (3.6, 60.0) is dominated by (3.4, 63.3); the rest are on the hull, cheapest first.
        assert_eq!(hull_of(&ladder()), vec![6, 5, 4, 2, 1, 0]);
        // A rung under the chord of its neighbours is left out.
        assert_eq!(hull_of(&rungs(&[(4.0, 70.0), (3.0, 61.0), (2.0, 60.0), (1.0, 40.0)])), vec![3, 2, 0]);
        assert!(hull_of(&[]).is_empty());
    }

    #[test]
    fn idle_takes_the_most_accurate() {
        let r = ladder();
        assert_eq!(rung(choose(&view(&r), &hull_of(&r))), 0);
    }

    #[test]
    fn the_budget_is_the_backlogs_share_less_overhead() {
        let r = ladder();
        let v = View { behind: 19, busy_us: 10_000.0, ..view(&r) };
        // (2 × 0.9 × 50 ms − 10 ms) / 20 − 0.5 ms = 3.5 ms.
        assert!((share_budget(&v) - 3_500.0).abs() < 1e-6);
    }

    #[test]
    fn the_mix_spends_the_budget_on_average() {
        let r = ladder();
        let h = hull_of(&r);
        // Budget 3.5 ms lies between the 3.4 ms rung and the 7.5 ms one: the dearer one with
        // probability 0.1/4.1, so the mean cost over uniform draws equals the budget.
        let v = View { behind: 19, busy_us: 10_000.0, ..view(&r) };
        let draws = 10_000;
        let mean = (0..draws)
            .map(|i| {
                let d = choose(&View { dither: (i as f64 + 0.5) / draws as f64, ..v }, &h);
                r[rung(d)].cost_us
            })
            .sum::<f64>()
            / draws as f64;
        assert!((mean - share_budget(&v)).abs() < 5.0, "mean cost {mean} vs budget {}", share_budget(&v));
        // Only the two hull neighbours are used.
        for i in 0..100 {
            let pick = rung(choose(&View { dither: i as f64 / 100.0, ..v }, &h));
            assert!(pick == 2 || pick == 1, "{pick}");
        }
    }

    #[test]
    fn heavier_backlog_moves_down_the_ladder() {
        let r = ladder();
        let h = hull_of(&r);
        let picks: Vec<usize> = [0, 10, 30, 60, 120].iter().map(|&b| rung(choose(&View { behind: b, dither: 0.0, ..view(&r) }, &h))).collect();
        assert!(picks.windows(2).all(|w| w[0] <= w[1]), "{picks:?}");
        assert_eq!(*picks.last().unwrap(), 6);
    }

    #[test]
    fn the_requests_own_deadline_caps_the_pick() {
        let r = ladder();
        let h = hull_of(&r);
        // 40 ms waited: 0.9 × 50 − 40 − 0.05 = 4.95 ms left: the 3.4 ms rung, though the share allows more.
        assert_eq!(rung(choose(&View { waited_us: 40_000.0, newest_slack_us: 50_000.0, ..view(&r) }, &h)), 2);
        // A per-request deadline tighter than T does the same: 0.9 × 2 − 0.05 = 1.75 ms left.
        assert_eq!(rung(choose(&View { bound_us: 2_000.0, newest_slack_us: 2_000.0, ..view(&r) }, &h)), 5);
    }

    #[test]
    fn sheds_only_what_cannot_make_its_deadline() {
        let r = ladder();
        let h = hull_of(&r);
        assert_eq!(choose(&View { waited_us: 49_700.0, behind: 3, ..view(&r) }, &h), Decision::Shed);
        // Nobody behind it: refusing would free the cores for no one, so the cheapest runs it.
        assert_eq!(rung(choose(&View { waited_us: 49_700.0, ..view(&r) }, &h)), 6);
        // Late for the target but the cheapest still fits the bound: run it rather than refuse.
        assert_eq!(rung(choose(&View { waited_us: 49_000.0, ..view(&r) }, &h)), 6);
    }

    #[test]
    fn target_settles_at_the_miss_rate() {
        // A stream where a fraction p of requests are late: α falls when p > MISS_RATE, rises when below.
        let run = |p: f64| {
            let mut a = 0.6;
            let mut acc = 0.0;
            for _ in 0..200_000 {
                acc += p;
                let late = acc >= 1.0;
                if late {
                    acc -= 1.0;
                }
                a = next_target(a, if late { 49_900.0 } else { 10_000.0 }, 50_000.0);
            }
            a
        };
        assert!(run(0.02) <= TARGET_RANGE.0 + 1e-9, "{}", run(0.02));
        // (A late request just before the end may have stepped it down once from the cap.)
        assert!(run(0.001) >= TARGET_RANGE.1 * (1.0 - STEP) - 1e-9, "{}", run(0.001));
        // Exactly at the miss rate the drift is ~0: α stays near where it started.
        let at = run(MISS_RATE);
        assert!((0.4..0.8).contains(&at), "{at}");
    }
}
