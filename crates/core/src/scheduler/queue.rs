//! The bounded priority queue of waiting rows, and the batch a worker claims from it.

use super::Pending;
use crate::model::Sample;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A request's rows that no worker has claimed yet.
struct Waiting {
    request: Arc<Pending>,
    /// Index (in the request) of the first row still in `rows`.
    next_row: usize,
    rows: VecDeque<Sample>,
}

/// Waiting requests by priority level, FIFO within a level.
///
/// Within a level the head is the oldest request, so it is also the one that has aged the
/// most: the best request overall is always one of the heads, which keeps picking
/// O(levels) instead of O(requests).
pub(super) struct Queue {
    levels: BTreeMap<i32, VecDeque<Waiting>>,
    rows: usize,
    closed: bool,
    aging: Duration,
}

/// What one claiming pass left behind besides the rows it claimed.
#[derive(Default)]
pub(super) struct Claim {
    /// Requests found past their deadline; already out of the queue, not yet answered.
    pub(super) expired: Vec<Arc<Pending>>,
    /// The best next row has other per-row shapes than the batch: it must start a new one.
    pub(super) blocked: bool,
}

impl Queue {
    pub(super) fn new(aging: Duration) -> Self {
        Self {
            levels: BTreeMap::new(),
            rows: 0,
            closed: false,
            aging,
        }
    }

    /// Rows waiting to be claimed.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    pub(super) fn push(&mut self, request: Arc<Pending>, samples: Vec<Sample>) {
        self.rows += samples.len();
        self.levels
            .entry(request.priority)
            .or_default()
            .push_back(Waiting {
                request,
                next_row: 0,
                rows: samples.into(),
            });
    }

    /// Drops whatever rows of request `id` are still waiting; returns how many.
    pub(super) fn remove(&mut self, priority: i32, id: u64) -> usize {
        let Some(level) = self.levels.get_mut(&priority) else {
            return 0;
        };
        let Some(position) = level.iter().position(|w| w.request.id == id) else {
            return 0;
        };
        let removed = level.remove(position).map_or(0, |w| w.rows.len());
        if level.is_empty() {
            self.levels.remove(&priority);
        }
        self.rows -= removed;
        removed
    }

    /// Priority plus one level per `aging` waited, so that low levels are not starved.
    fn effective_priority(&self, waiting: &Waiting, now: Instant) -> i64 {
        let base = i64::from(waiting.request.priority);
        if self.aging.is_zero() {
            return base;
        }
        let waited = now.saturating_duration_since(waiting.request.enqueued);
        let gained = waited.as_nanos() / self.aging.as_nanos();
        base.saturating_add(i64::try_from(gained).unwrap_or(i64::MAX))
    }

    /// The level whose head should be served next: highest effective priority, then oldest.
    fn best_level(&self, now: Instant) -> Option<i32> {
        self.levels
            .iter()
            .filter_map(|(&level, requests)| requests.front().map(|head| (level, head)))
            .max_by(|(_, a), (_, b)| {
                self.effective_priority(a, now)
                    .cmp(&self.effective_priority(b, now))
                    // Older (smaller id) wins a tie, so reverse the id order.
                    .then(b.request.id.cmp(&a.request.id))
            })
            .map(|(level, _)| level)
    }

    /// Moves rows into `batch`, best first, until it holds `max_rows` rows, the queue is
    /// empty, or the next row cannot be stacked with the batch.
    pub(super) fn claim(&mut self, batch: &mut Claimed, max_rows: usize, now: Instant) -> Claim {
        let mut claim = Claim::default();
        while batch.len() < max_rows && !claim.blocked {
            let Some(level) = self.best_level(now) else {
                break;
            };
            let Some(requests) = self.levels.get_mut(&level) else {
                break;
            };
            let Some(head) = requests.front_mut() else {
                break;
            };
            if head
                .request
                .deadline
                .is_some_and(|deadline| deadline <= now)
            {
                self.rows -= head.rows.len();
                claim.expired.push(Arc::clone(&head.request));
                requests.pop_front();
            } else {
                while batch.len() < max_rows {
                    let Some(row) = head.rows.front() else {
                        break;
                    };
                    if !batch.fits(row) {
                        claim.blocked = true;
                        break;
                    }
                    if let Some(row) = head.rows.pop_front() {
                        batch.push(&head.request, head.next_row, row);
                        head.next_row += 1;
                        self.rows -= 1;
                    }
                }
                if head.rows.is_empty() {
                    requests.pop_front();
                }
            }
            if requests.is_empty() {
                self.levels.remove(&level);
            }
        }
        claim
    }
}

/// One row of a claimed batch: which request it belongs to and where.
pub(super) struct RowRef {
    pub(super) request: Arc<Pending>,
    pub(super) index: usize,
}

/// Rows a worker has taken out of the queue to run as one engine batch.
#[derive(Default)]
pub(super) struct Claimed {
    pub(super) rows: Vec<RowRef>,
    pub(super) samples: Vec<Sample>,
}

impl Claimed {
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// When the oldest claimed row was enqueued.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.rows.iter().map(|row| row.request.enqueued).min()
    }

    /// Rows stack only with rows of the same per-input shapes (models with dynamic dims).
    fn fits(&self, row: &Sample) -> bool {
        self.samples.first().is_none_or(|first| {
            first.tensors.len() == row.tensors.len()
                && first
                    .tensors
                    .iter()
                    .zip(&row.tensors)
                    .all(|(a, b)| a.shape() == b.shape())
        })
    }

    fn push(&mut self, request: &Arc<Pending>, index: usize, sample: Sample) {
        self.rows.push(RowRef {
            request: Arc::clone(request),
            index,
        });
        self.samples.push(sample);
    }

    /// Keeps only the rows for which `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&RowRef) -> bool) {
        let mut kept_rows = Vec::with_capacity(self.rows.len());
        let mut kept_samples = Vec::with_capacity(self.samples.len());
        for (row, sample) in self.rows.drain(..).zip(self.samples.drain(..)) {
            if keep(&row) {
                kept_rows.push(row);
                kept_samples.push(sample);
            }
        }
        self.rows = kept_rows;
        self.samples = kept_samples;
    }

    /// Each distinct request of the batch once, in batch order.
    pub(super) fn requests(&self) -> Vec<Arc<Pending>> {
        let mut seen = HashSet::new();
        self.rows
            .iter()
            .filter(|row| seen.insert(row.request.id))
            .map(|row| Arc::clone(&row.request))
            .collect()
    }
}
