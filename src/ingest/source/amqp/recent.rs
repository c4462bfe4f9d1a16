//! The ids of the messages this source has seen committed, the most recent
//! `window` of them: what a redelivered message is recognised by.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
pub struct Recent {
    window: usize,
    order: VecDeque<Arc<str>>,
    known: HashSet<Arc<str>>,
}

impl Recent {
    /// Recalls `ids` (oldest first), keeping the last `window` of them.
    pub fn new(window: usize, ids: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut recent = Self { window, order: VecDeque::new(), known: HashSet::new() };
        recent.extend(ids);
        recent
    }

    pub fn contains(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    /// Adds committed ids, forgetting the oldest past the window.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = Arc<str>>) {
        for id in ids {
            if !self.known.insert(id.clone()) {
                continue;
            }
            self.order.push_back(id);
            if self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|&id| Arc::from(id)).collect()
    }

    #[test]
    fn keeps_the_most_recent_window() {
        let mut recent = Recent::new(3, ids(&["a", "b"]));
        recent.extend(ids(&["c", "b", "d"]));
        assert!(!recent.contains("a"));
        assert!(["b", "c", "d"].iter().all(|id| recent.contains(id)));
        recent.extend(ids(&["e"]));
        assert!(!recent.contains("b"));
    }
}
