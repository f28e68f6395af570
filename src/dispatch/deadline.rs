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
//!    other workers; each request's share (at most one worker's: a request runs on one core),
//!    less the per-request work beside inference (decode, resize), is the inference budget `B`.
//!    This is the decode-aware optimum's `k·T/N − o` read off the live queue instead of a client
//!    count: under a closed loop with N clients the queue holds N − k requests, and `B` tends to
//!    `k·target·T/N − o`.
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
//! `target` (α) scales T into the latency the policy aims at, leaving room for the tail. [`Tail`]
//! learns it from the answers of the last `WINDOW_US`: each answer's deviation from what was
//! aimed at, `d = (latency − α_then × bound) / bound`, and α = `LATE_AT − q`, where `q` is the
//! `1 − MISS_RATE` quantile of those deviations. Aiming at α·T with that spread around it puts
//! the `1 − MISS_RATE` quantile of latency at `LATE_AT × T`: at equilibrium 99.7 % of those
//! requests finish within 98 % of T, whatever the load, the machine or the ladder — nothing here is tuned
//! to one of them. The deviation includes the estimates' bias (aimed at 40 ms, took 44 ms), so a
//! biased cost estimate is corrected in one window too. Under a closed loop the mean latency is
//! ≈ α·T (the workers are never idle), so α is the fraction of the optimum's budget spent.
//!
//! Why a window and not a step-by-step quantile tracker (the first version): lateness comes in
//! bursts — a stall of the machine makes every request queued behind it late together — and a
//! tracker that steps down per late request and up 200 times slower per on-time one fell to the
//! cheapest model after one burst and needed ~10 s to climb back (measured: 56 clients on 2
//! cores, accuracy 41.5 for 8 s after one stall). The window forgets a burst `WINDOW_US` later,
//! and between bursts it holds exactly the quantile the goal is about.

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
    /// α, from [`Tail`].
    pub target: f64,
    /// The budget the mix aims at: the backlog's share smoothed over a queue turnover
    /// ([`smooth_budget`]); `None` takes this request's own share ([`share_budget`]).
    pub smoothed_budget_us: Option<f64>,
    /// A uniform draw in [0, 1) for the mix.
    pub dither: f64,
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Run {
        rung: usize,
        estimate_us: f64,
    },
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
    let one_worker = v.target * v.newest_slack_us;
    let time = v.workers.max(1) as f64 * one_worker - v.busy_us;
    // A request runs on one worker: fewer requests than workers leave the rest idle, and a share
    // is at most one worker's time (the optimum's min(k, N)·T/N).
    (time / (v.behind + 1) as f64).min(one_worker) - v.overhead_us
}

/// The budget the mix aims at after one more request's share, `peers` being the requests in the
/// system: an average over about one queue turnover.
///
/// Why smooth: one request's share jumps with the exact moment it is taken (how many requests
/// are between the fleet and the queue, how much of the other workers' runs is left), and the
/// hull is concave — at a kink like (1.0 ms, 56.3 %) going 0.3 ms under costs 14 points and going
/// 0.3 ms over gains 2. Following every jump spread the picks over four rungs around the kink
/// and lost 3–4 points at 56 clients on 2 cores (measured: 53.0 against 56.6 for the same mean
/// cost on the hull). The mean of the shares is what the queue's wait depends on, so the mix
/// follows the mean; the request's own deadline (step 3) still guards each pick at once.
///
/// A share below `REGIME_DROP` × the average is not noise but a step in the load (clients
/// arrived at once): the average jumps to it. Easing down over a turnover instead gave the whole
/// first queue of a step from 2 to 32 clients the light load's dear models, and 5 % of the
/// heavy phase missed T (tests/scheduler.rs). A rise is followed smoothly: erring low is safe.
pub fn smooth_budget(previous_us: f64, share_us: f64, peers: usize) -> f64 {
    if !previous_us.is_finite() || share_us < REGIME_DROP * previous_us {
        return share_us;
    }
    previous_us + (share_us - previous_us) / peers.max(1) as f64
}

/// See [`smooth_budget`]: a share this far under the average restarts it.
pub const REGIME_DROP: f64 = 0.5;

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
    let budget = v.smoothed_budget_us.unwrap_or_else(|| share_budget(v));
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

/// The latency, as a fraction of the bound, that at most `MISS_RATE` of requests may exceed.
pub const LATE_AT: f64 = 0.98;
/// The share of the answers α learns from allowed past `LATE_AT × bound` at equilibrium. The
/// goal allows 1 % past the bound; refusals past saturation and answers the policy had no choice
/// over (see `engine::pool`) are not in the window and take part of that 1 %, so the window gets
/// less than half of it.
pub const MISS_RATE: f64 = 0.003;
/// How far back [`Tail`] looks, µs: long enough to hold a few hundred answers at the lightest
/// loads where the tail matters, short enough to forget a burst within a few seconds.
pub const WINDOW_US: u64 = 3_000_000;
/// At most this many answers are kept (at 16 cores' rates the window holds ~1.5 s of them).
pub const WINDOW_CAP: usize = 8192;
/// α is re-estimated after this many answers (a quantile select over the window each time).
pub const REESTIMATE_EVERY: usize = 16;
/// Where α starts, before the window has answers, and its range. It starts below 1 because the
/// first seconds under load are when the cost estimates are least settled.
pub const INITIAL_TARGET: f64 = 0.85;
pub const TARGET_RANGE: (f64, f64) = (0.2, 1.0);

/// α from the deviations of recent answers (see the module comment); reorders `deviations`.
pub fn target_from(deviations: &mut [f64]) -> f64 {
    if deviations.is_empty() {
        return INITIAL_TARGET;
    }
    // The ⌈(1 − MISS_RATE)·n⌉-th smallest: with fewer than 1/MISS_RATE answers, the largest.
    let k = (((1.0 - MISS_RATE) * deviations.len() as f64).ceil() as usize).clamp(1, deviations.len()) - 1;
    let (_, q, _) = deviations.select_nth_unstable_by(k, f64::total_cmp);
    (LATE_AT - *q).clamp(TARGET_RANGE.0, TARGET_RANGE.1)
}

/// The window of recent answers α is learned from. Pure: the caller passes the clock.
#[derive(Debug)]
pub struct Tail {
    /// (answered at, µs; deviation), oldest first.
    answers: std::collections::VecDeque<(u64, f64)>,
    scratch: Vec<f64>,
    since_estimate: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail { answers: std::collections::VecDeque::with_capacity(WINDOW_CAP), scratch: Vec::with_capacity(WINDOW_CAP), since_estimate: 0 }
    }
}

impl Tail {
    /// Records one answer — its latency and bound, and the α it was aimed with — and returns the
    /// new α when it is re-estimated (every `REESTIMATE_EVERY` answers).
    pub fn record(&mut self, now_us: u64, latency_us: f64, bound_us: f64, aimed: f64) -> Option<f64> {
        if bound_us.is_nan() || bound_us <= 0.0 || !latency_us.is_finite() {
            return None;
        }
        if self.answers.len() == WINDOW_CAP {
            self.answers.pop_front();
        }
        self.answers.push_back((now_us, (latency_us - aimed * bound_us) / bound_us));
        while self.answers.front().is_some_and(|&(at, _)| now_us.saturating_sub(at) > WINDOW_US) {
            self.answers.pop_front();
        }
        self.since_estimate += 1;
        if self.since_estimate < REESTIMATE_EVERY {
            return None;
        }
        self.since_estimate = 0;
        self.scratch.clear();
        self.scratch.extend(self.answers.iter().map(|&(_, d)| d));
        Some(target_from(&mut self.scratch))
    }
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
            smoothed_budget_us: None,
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
        // A lone request gets one worker's time, not the two workers': 0.9 × 50 ms − 0.5 ms.
        assert!((share_budget(&view(&r)) - 44_500.0).abs() < 1e-6);
        // Two requests on two workers: one worker's time each.
        assert!((share_budget(&View { behind: 1, ..view(&r) }) - 44_500.0).abs() < 1e-6);
        // Three: the two workers' time shared three ways, (2 × 45 ms) / 3 − 0.5 ms.
        assert!((share_budget(&View { behind: 2, ..view(&r) }) - 29_500.0).abs() < 1e-6);
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
    fn target_puts_the_tail_quantile_at_late_at() {
        // 1000 answers: 990 exactly on aim, 10 that overran by 10 % of the bound. 0.3 % of 1000 is
        // 3 < 10, so the 99.7 % quantile is an overrun: aim 10 % lower than LATE_AT.
        let mut d: Vec<f64> = (0..1000).map(|i| if i % 100 == 0 { 0.1 } else { 0.0 }).collect();
        assert!((target_from(&mut d) - (LATE_AT - 0.1)).abs() < 1e-12);
        // Only 2 overruns in 1000 (under MISS_RATE): they are the tail the goal allows.
        let mut d: Vec<f64> = (0..1000).map(|i| if i % 500 == 0 { 0.1 } else { 0.0 }).collect();
        assert!((target_from(&mut d) - LATE_AT).abs() < 1e-12);
        // Answers well ahead of their aim (light load) allow the whole bound; a wild tail the floor.
        assert_eq!(target_from(&mut [-0.5; 300]), TARGET_RANGE.1);
        assert_eq!(target_from(&mut [2.0; 300]), TARGET_RANGE.0);
        assert_eq!(target_from(&mut []), INITIAL_TARGET);
    }

    #[test]
    fn a_burst_is_forgotten_after_the_window() {
        let mut t = Tail::default();
        let bound = 50_000.0;
        let mut alpha = None;
        let mut now = 0;
        // 1 s of answers on aim at α 0.9, 1000/s, with a burst of 60 late ones (a stall) at 0.5 s.
        for i in 0..1000u64 {
            now = i * 1000;
            let late = (500..560).contains(&i);
            alpha = t.record(now, if late { 60_000.0 } else { 45_000.0 }, bound, 0.9).or(alpha);
        }
        // The burst is 6 % of the window: α drops by the burst's overrun, (60 − 45)/50 = 0.3.
        assert!((alpha.unwrap() - (LATE_AT - 0.3)).abs() < 1e-9, "{alpha:?}");
        // Once the burst is older than the window, α is back where the on-aim answers put it.
        for i in 0..4000u64 {
            now += 1000;
            let _ = i;
            alpha = t.record(now, 45_000.0, bound, 0.9).or(alpha);
        }
        assert!((alpha.unwrap() - LATE_AT).abs() < 1e-9, "{alpha:?}");
        // Nonsense input is ignored, not recorded.
        assert_eq!(t.record(now, f64::NAN, bound, 0.9), None);
        assert_eq!(t.record(now, 1.0, 0.0, 0.9), None);
    }

    #[test]
    fn the_mix_follows_the_smoothed_budget() {
        let r = ladder();
        let h = hull_of(&r);
        // Shares alternating 0.9 ms and 1.3 ms around the 1.1 ms rung average to 1.1 ms: the
        // smoothed budget stays near it and the picks stay on that rung and its dearer neighbour.
        let mut b = f64::NAN;
        for i in 0..200 {
            b = smooth_budget(b, if i % 2 == 0 { 900.0 } else { 1_300.0 }, 20);
        }
        assert!((b - 1_100.0).abs() < 25.0, "{b}");
        let v = View { smoothed_budget_us: Some(b), ..view(&r) };
        for i in 0..100 {
            let pick = rung(choose(&View { dither: i as f64 / 100.0, ..v }, &h));
            assert!(pick == 5 || pick == 4, "{pick}");
        }
        // The first share is taken as it is; one peer means no smoothing at all.
        assert_eq!(smooth_budget(f64::NAN, 700.0, 20), 700.0);
        // A step in the load (a share under half the average) is followed at once; a rise is eased into.
        assert_eq!(smooth_budget(10_000.0, 3_000.0, 20), 3_000.0);
        assert_eq!(smooth_budget(3_000.0, 10_000.0, 20), 3_350.0);
        assert_eq!(smooth_budget(1_000.0, 700.0, 1), 700.0);
    }
}
