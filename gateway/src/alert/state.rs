//! The engine's state as operators and the store see it: restoring it at start, acknowledging
//! alerts, the changes to commit, and what is open.

use std::collections::BTreeMap;
use std::sync::Arc;

use device_profiles::Catalog;

use super::Rule;
use super::engine::Engine;
use super::model::{Ack, AckError, Alert, AlertEvent, Changes, Comment, EventKind, SubjectState};

impl Engine {
    /// Restores persisted states (at start). Rows of rules that no longer exist are returned.
    pub fn restore(&mut self, rows: Vec<(String, SubjectState)>) -> Vec<String> {
        let mut unknown = Vec::new();
        for (key, state) in rows {
            let found = key.split_once('|').and_then(|(rule, subject)| {
                let i = self.rules.iter().position(|c| c.rule.id == rule)?;
                Some((i, Arc::<str>::from(subject)))
            });
            match found {
                Some(k) => {
                    if state.episode.pending() {
                        // Its zone for the event: the site's, or the open alert's.
                        let zone = self
                            .ctx
                            .subjects
                            .get(&k.1)
                            .map(|(_, z)| z.clone())
                            .or_else(|| state.alert.as_ref().map(|a| Arc::from(a.zone.as_str())))
                            .unwrap_or_else(|| Arc::from(""));
                        let latest_ms = state.episode.latest_time().unwrap_or(i64::MIN);
                        let pending = super::timed::Pending {
                            zone,
                            latest_ms,
                            arrived_ms: None,
                        };
                        self.pending.insert(k.clone(), pending);
                    }
                    self.states.insert(k, state);
                }
                None => unknown.push(key),
            }
        }
        unknown
    }

    /// Acknowledges an open alert (once: acknowledged again, it stays as it was).
    pub fn ack(&mut self, id: &str, by: &str, note: &str, now_ms: i64) -> Result<Alert, AckError> {
        self.note_on(id, now_ms, |alert| {
            if alert.ack.is_some() {
                return None;
            }
            alert.ack = Some(Ack {
                by: by.to_owned(),
                note: note.to_owned(),
                at_ms: now_ms,
            });
            Some(EventKind::Acknowledged)
        })
    }

    /// Gives an open alert to `to`, recorded as done by `by`.
    pub fn assign(&mut self, id: &str, to: &str, by: &str, now_ms: i64) -> Result<Alert, AckError> {
        self.note_on(id, now_ms, |alert| {
            alert.assigned_to = Some(to.to_owned());
            alert.comments.push(Comment {
                by: by.to_owned(),
                text: format!("assigned to {to}"),
                at_ms: now_ms,
            });
            Some(EventKind::Assigned)
        })
    }

    /// Adds `by`'s comment `text` to an open alert.
    pub fn comment(
        &mut self,
        id: &str,
        by: &str,
        text: &str,
        now_ms: i64,
    ) -> Result<Alert, AckError> {
        self.note_on(id, now_ms, |alert| {
            alert.comments.push(Comment {
                by: by.to_owned(),
                text: text.to_owned(),
                at_ms: now_ms,
            });
            Some(EventKind::Commented)
        })
    }

    /// Takes what operators did to alert `theirs.id` on a replica (its acknowledgement,
    /// assignment and comments, as that replica's retained subject state carries them), with
    /// their own names and times, so both replicas record the same events; what is here already
    /// stays as it is. How many events it made; not found: the alert is not open here, or not
    /// yet in the state the peer's is in (the peer made a transition this replica has still to
    /// make: its acknowledgement may be of a grade not reached here), so try again later. An
    /// acknowledgement from a peer behind this replica (an escalation here cleared it) is not
    /// taken; its comments are.
    pub fn adopt(&mut self, theirs: &Alert) -> Result<usize, AckError> {
        let id = theirs.id.as_str();
        let ours = self
            .states
            .values()
            .find_map(|s| s.alert.as_ref().filter(|a| a.id == id))
            .filter(|ours| ours.updated_ms >= theirs.updated_ms)
            .cloned()
            .ok_or_else(|| AckError::NotFound(id.to_owned()))?;
        let mut made = 0;
        if let Some(ack) = &theirs.ack
            && ours.ack.is_none()
            && ours.updated_ms == theirs.updated_ms
        {
            self.ack(id, &ack.by, &ack.note, ack.at_ms)?;
            made += 1;
        }
        let mut new: Vec<&Comment> = theirs
            .comments
            .iter()
            .filter(|c| !ours.comments.contains(c))
            .collect();
        new.sort_by_key(|c| c.at_ms);
        for c in new {
            match c.text.strip_prefix("assigned to ") {
                Some(to) => self.assign(id, to, &c.by, c.at_ms)?,
                None => self.comment(id, &c.by, &c.text, c.at_ms)?,
            };
            made += 1;
        }
        Ok(made)
    }

    /// Changes the open alert `id` with `change` and records the event it names (none: it
    /// changed nothing).
    fn note_on(
        &mut self,
        id: &str,
        now_ms: i64,
        change: impl FnOnce(&mut Alert) -> Option<EventKind>,
    ) -> Result<Alert, AckError> {
        let Some((key, state)) = self
            .states
            .iter_mut()
            .find(|(_, s)| s.alert.as_ref().is_some_and(|a| a.id == id))
        else {
            return Err(AckError::NotFound(id.to_owned()));
        };
        let Some(alert) = state.alert.as_mut() else {
            return Err(AckError::NotFound(id.to_owned()));
        };
        let Some(kind) = change(alert) else {
            return Ok(alert.clone());
        };
        let alert = alert.clone();
        self.dirty.insert(key.clone());
        self.events.push(AlertEvent {
            kind,
            at_ms: now_ms,
            previous_severity: None,
            alert: alert.clone(),
        });
        Ok(alert)
    }

    /// Takes in the rules of a reload and the catalog they apply to: the states of rules
    /// still in force are kept (open alerts, acknowledgements, episodes), as are the recent
    /// values of derivations; holds under way start again. Call with every change committed
    /// (the commit lock held). The latest occupancies and grades the advice reads are kept too,
    /// and so is the escalations' pacing.
    /// Returns the states of rules no longer in force, dropped.
    pub fn reload(&mut self, catalog: &Catalog, rules: Vec<Rule>, renotify_s: u32) -> Vec<String> {
        let mut next = Engine::new(catalog, rules, renotify_s);
        let rows = self
            .states
            .drain()
            .map(|((i, subject), state)| (format!("{}|{}", self.rules[i].rule.id, subject), state))
            .collect();
        let dropped = next.restore(rows);
        next.history = std::mem::take(&mut self.history);
        next.situation.carry_over(&mut self.situation);
        // The escalations' wall-clock pacing goes on (by rule id: the indices may move).
        for ((i, subject), wall) in self.stepped_wall.drain() {
            let id = &self.rules[i].rule.id;
            if let Some(j) = next.rules.iter().position(|c| c.rule.id == *id) {
                next.stepped_wall.insert((j, subject), wall);
            }
        }
        *self = next;
        dropped
    }

    /// What changed since the last call, to commit.
    pub fn take_changes(&mut self) -> Changes {
        let states = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(i, subject)| {
                // A state dropped at rest is written as such.
                let s = self.states.get(&(i, subject.clone())).cloned();
                let row = format!("{}|{}", self.rules[i].rule.id, subject);
                (row, s.unwrap_or_default())
            })
            .collect();
        Changes {
            states,
            events: std::mem::take(&mut self.events),
        }
    }

    /// Open alerts, oldest first.
    pub fn open_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .states
            .values()
            .filter_map(|s| s.alert.clone())
            .collect();
        v.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        v
    }

    /// Open alerts counted by (category, severity), with a zero for every pair a rule can
    /// raise (so gauges fall back to zero).
    pub fn active_counts(&self) -> BTreeMap<(&'static str, String), i64> {
        let mut counts = BTreeMap::new();
        for c in &self.rules {
            for g in &c.rule.grades {
                counts.insert((c.rule.category.name(), g.name.clone()), 0);
            }
        }
        for s in self.states.values() {
            if let Some(a) = &s.alert {
                *counts
                    .entry((a.category.name(), a.severity.clone()))
                    .or_default() += 1;
            }
        }
        counts
    }
}
