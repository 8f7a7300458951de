//! An inbound's users as a shard holds them, and the watch that closes a user's live sessions
//! when the user is removed or kicked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use shardray_core::stats::UserCounters;
use slab::Slab;
use uuid::Uuid;

/// A user as one shard's inbound knows it.
pub(crate) struct UserRt {
    pub(crate) email: Arc<str>,
    pub(crate) level: Cell<u32>,
    /// `None` for a user without an email: upstream keeps no counters for those.
    pub(crate) counters: Option<Rc<UserCounters>>,
    /// Bumped when the user's live sessions must close (removed or kicked).
    generation: Cell<u64>,
}

impl UserRt {
    pub(crate) fn new(email: Arc<str>, level: u32, counters: Option<Rc<UserCounters>>) -> UserRt {
        UserRt { email, level: Cell::new(level), counters, generation: Cell::new(0) }
    }
}

/// One inbound's users, by id (the hot-path lookup) and by lowercase email (for the API).
#[derive(Default)]
pub(crate) struct UserTable {
    by_id: HashMap<Uuid, Rc<UserRt>>,
    by_email: HashMap<Box<str>, Uuid>,
}

impl UserTable {
    pub(crate) fn get(&self, id: &Uuid) -> Option<&Rc<UserRt>> {
        self.by_id.get(id)
    }

    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn by_email(&self, email: &str) -> Option<&Rc<UserRt>> {
        self.by_email.get(email.to_ascii_lowercase().as_str()).and_then(|id| self.by_id.get(id))
    }

    /// Adds or replaces the user with this id.
    pub(crate) fn insert(&mut self, id: Uuid, user: Rc<UserRt>) {
        if !user.email.is_empty() {
            self.by_email.insert(user.email.to_ascii_lowercase().into(), id);
        }
        if let Some(old) = self.by_id.insert(id, user) {
            if !old.email.is_empty() && !old.email.eq_ignore_ascii_case(&self.by_id[&id].email) {
                self.by_email.remove(old.email.to_ascii_lowercase().as_str());
            }
        }
    }

    /// Removes the user with this email, returning it.
    pub(crate) fn remove_email(&mut self, email: &str) -> Option<Rc<UserRt>> {
        let id = self.by_email.remove(email.to_ascii_lowercase().as_str())?;
        self.by_id.remove(&id)
    }

    /// Removes the users for which `remove` says so, returning them.
    pub(crate) fn remove_if(&mut self, remove: impl Fn(&Uuid, &UserRt) -> bool) -> Vec<Rc<UserRt>> {
        let ids: Vec<Uuid> = self.by_id.iter().filter(|(id, u)| remove(id, u)).map(|(id, _)| *id).collect();
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(user) = self.by_id.remove(&id) {
                self.by_email.remove(user.email.to_ascii_lowercase().as_str());
                removed.push(user);
            }
        }
        removed
    }
}

/// The shard's live sessions that belong to users, so a removal or kick can wake them.
#[derive(Default)]
pub(crate) struct SessionWatchers {
    watchers: RefCell<Slab<(Rc<UserRt>, Waker)>>,
}

impl SessionWatchers {
    /// Closes the user's live sessions: they see a new generation when next polled.
    pub(crate) fn kick(&self, user: &Rc<UserRt>) {
        user.generation.set(user.generation.get() + 1);
        self.wake(user);
    }

    /// Moves the user to another level; its live sessions pick it up when next polled.
    pub(crate) fn set_level(&self, user: &Rc<UserRt>, level: u32) {
        user.level.set(level);
        self.wake(user);
    }

    fn wake(&self, user: &Rc<UserRt>) {
        for (_, (u, waker)) in self.watchers.borrow().iter() {
            if Rc::ptr_eq(u, user) {
                waker.wake_by_ref();
            }
        }
    }
}

/// What a session sees of its user when it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserState {
    /// Nothing changed.
    Same,
    /// The user was removed or kicked: close.
    Closed,
    /// The user moved to this level: go on under its policy.
    Level(u32),
}

/// A session's view of its user: whether it must close or change level, and its place among
/// the watchers.
pub(crate) struct SessionWatch<'a> {
    watchers: &'a SessionWatchers,
    user: Rc<UserRt>,
    generation: u64,
    level: Cell<u32>,
    key: Cell<Option<usize>>,
}

impl<'a> SessionWatch<'a> {
    pub(crate) fn new(watchers: &'a SessionWatchers, user: Rc<UserRt>) -> SessionWatch<'a> {
        let generation = user.generation.get();
        let level = Cell::new(user.level.get());
        SessionWatch { watchers, user, generation, level, key: Cell::new(None) }
    }

    /// Whether the user was removed or kicked since the session started.
    pub(crate) fn is_closed(&self) -> bool {
        self.user.generation.get() != self.generation
    }

    /// What changed since the last look. The first call also registers the task's waker (a
    /// task's waker stays valid for the task's life), so later changes wake the session.
    pub(crate) fn check(&self, waker: &Waker) -> UserState {
        if self.key.get().is_none() {
            let entry = (self.user.clone(), waker.clone());
            self.key.set(Some(self.watchers.watchers.borrow_mut().insert(entry)));
        }
        if self.is_closed() {
            return UserState::Closed;
        }
        let level = self.user.level.get();
        if level != self.level.replace(level) {
            return UserState::Level(level);
        }
        UserState::Same
    }
}

impl Drop for SessionWatch<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.get() {
            self.watchers.watchers.borrow_mut().remove(key);
        }
    }
}
