//! The best accuracy any mix of models could reach at a given load: the yardstick that every
//! policy's mean accuracy is reported against.
//!
//! With N closed-loop clients (no think time), K inference workers and bound T, each request's
//! response time R ≤ T, so throughput is N/R ≥ N/T, and the workers keep up only if the mean
//! service time s satisfies s·N/R ≤ K, i.e. s ≤ K·T/N. With fewer clients than workers only N
//! of them can be busy (one request runs on one worker), and the bound is each request's own:
//! s ≤ T, which is the same formula with K replaced by min(K, N). The most accurate way to
//! spend a mean cost budget is a mix of at most two models adjacent on the upper convex hull
//! of (cost, accuracy): the optimum is that hull, read at the budget.

/// One model as measured: mean inference cost and declared accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub cost_ms: f64,
    pub accuracy: f64,
}

/// Upper convex hull of the points, by increasing cost. Dominated points (costlier and no
/// more accurate than another) and points under a chord between two others are dropped.
pub fn upper_hull(points: &[Point]) -> Vec<Point> {
    let mut idx = Vec::with_capacity(points.len());
    crate::dispatch::deadline::hull_of(points.len(), |i| points[i].cost_ms, |i| points[i].accuracy, &mut idx);
    idx.into_iter().map(|i| points[i]).collect()
}

/// What the optimum is at one load level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimum {
    /// Mean service-time budget K·T/N, ms.
    pub budget_ms: f64,
    pub accuracy: f64,
    /// False when even the cheapest model alone costs more than the budget: no mix keeps every
    /// request within T, and `accuracy` is the cheapest model's.
    pub feasible: bool,
}

/// The optimum mean accuracy with `clients` closed-loop clients, `workers` workers and bound T,
/// counting inference only.
pub fn optimum(models: &[Point], clients: usize, workers: usize, bound_ms: f64) -> Option<Optimum> {
    optimum_within(models, budget_ms(clients, workers, bound_ms))
}

/// The mean inference time each of `clients` closed-loop clients' requests may take on
/// `workers` workers within `bound_ms`: min(K, N)·T/N (see the module's comment), ms.
pub fn budget_ms(clients: usize, workers: usize, bound_ms: f64) -> f64 {
    let n = clients.max(1);
    workers.min(n) as f64 * bound_ms / n as f64
}

/// The optimum mean accuracy for a mean inference budget per request. The decode-aware optimum
/// passes `k·T/N − o`: every request also costs `o` of CPU beside inference (decode, resize,
/// sockets), which no model choice can avoid.
pub fn optimum_within(models: &[Point], budget_ms: f64) -> Option<Optimum> {
    let hull = upper_hull(models);
    let (first, last) = (*hull.first()?, *hull.last()?);
    if budget_ms < first.cost_ms {
        return Some(Optimum { budget_ms, accuracy: first.accuracy, feasible: false });
    }
    if budget_ms >= last.cost_ms {
        return Some(Optimum { budget_ms, accuracy: last.accuracy, feasible: true });
    }
    let i = hull.windows(2).position(|w| budget_ms < w[1].cost_ms).expect("budget lies inside the hull's cost range");
    let (a, b) = (hull[i], hull[i + 1]);
    let share_b = (budget_ms - a.cost_ms) / (b.cost_ms - a.cost_ms);
    Some(Optimum { budget_ms, accuracy: a.accuracy + share_b * (b.accuracy - a.accuracy), feasible: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost_ms: f64, accuracy: f64) -> Point {
        Point { cost_ms, accuracy }
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let pts = [p(1.0, 40.0), p(2.0, 60.0), p(3.0, 61.0), p(4.0, 70.0), p(5.0, 65.0), p(4.0, 50.0)];
        // (3, 61) lies under the chord (2, 60)-(4, 70); (5, 65) and (4, 50) are dominated.
        assert_eq!(upper_hull(&pts), vec![p(1.0, 40.0), p(2.0, 60.0), p(4.0, 70.0)]);
    }

    #[test]
    fn hull_of_one_and_of_nothing() {
        assert_eq!(upper_hull(&[p(1.0, 1.0)]), vec![p(1.0, 1.0)]);
        assert!(upper_hull(&[]).is_empty());
        assert!(optimum(&[], 1, 1, 1.0).is_none());
    }

    #[test]
    fn optimum_interpolates_between_hull_neighbours() {
        let pts = [p(1.0, 40.0), p(2.0, 60.0), p(4.0, 70.0)];
        // 2 workers, T = 30 ms, 20 clients: budget 3 ms, half-way between 2 and 4 ms.
        let o = optimum(&pts, 20, 2, 30.0).unwrap();
        assert_eq!(o, Optimum { budget_ms: 3.0, accuracy: 65.0, feasible: true });
    }

    #[test]
    fn optimum_saturates_at_both_ends() {
        let pts = [p(1.0, 40.0), p(2.0, 60.0), p(4.0, 70.0)];
        // Light load: the best model for everyone.
        assert_eq!(optimum(&pts, 1, 2, 30.0).unwrap().accuracy, 70.0);
        // Past the cheapest model's capacity: infeasible, the cheapest is the best one can do.
        let o = optimum(&pts, 100, 2, 30.0).unwrap();
        assert_eq!((o.accuracy, o.feasible), (40.0, false));
        assert!((o.budget_ms - 0.6).abs() < 1e-12);
    }

    #[test]
    fn fewer_clients_than_workers_leave_workers_idle() {
        // One request runs on one worker: one client on 2 workers has T, not 2·T, per request.
        assert_eq!(budget_ms(1, 2, 30.0), 30.0);
        assert_eq!(budget_ms(2, 2, 30.0), 30.0);
        assert_eq!(budget_ms(4, 2, 30.0), 15.0);
        let pts = [p(1.0, 40.0), p(2.0, 60.0), p(40.0, 70.0)];
        // The 40-ms model fits 2·T = 60 ms but not T = 30 ms: one client cannot have it.
        let o = optimum(&pts, 1, 2, 30.0).unwrap();
        assert!(o.budget_ms == 30.0 && o.accuracy < 70.0, "{o:?}");
    }

    #[test]
    fn decode_aware_optimum_spends_less() {
        let pts = [p(1.0, 40.0), p(2.0, 60.0), p(4.0, 70.0)];
        // 2 workers, T = 30 ms, 20 clients: 3 ms per request, 1 ms of it overhead: 2 ms for inference.
        assert_eq!(optimum_within(&pts, 2.0 * 30.0 / 20.0 - 1.0).unwrap().accuracy, 60.0);
        assert_eq!(optimum(&pts, 20, 2, 30.0).unwrap().accuracy, 65.0);
    }

    #[test]
    fn optimum_is_never_below_any_single_model_that_fits() {
        let pts = [p(0.4, 41.5), p(1.1, 56.3), p(1.8, 59.1), p(3.4, 63.3), p(7.5, 68.4), p(12.0, 70.9)];
        for clients in 1..200 {
            let o = optimum(&pts, clients, 2, 50.0).unwrap();
            for m in pts.iter().filter(|m| m.cost_ms <= o.budget_ms) {
                assert!(o.accuracy >= m.accuracy - 1e-9, "{clients} clients: {o:?} vs {m:?}");
            }
        }
    }
}
