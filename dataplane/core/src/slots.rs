//! Counter slots and the resolved user operations the control thread sends with a change.
//!
//! Every email the registry knows gets a slot: a small index, assigned by the control thread
//! when the email first appears and freed when its last inbound drops it. A shard keeps its
//! user counters in a vector indexed by slot, so a snapshot is a flat copy and the control
//! thread names each entry from its own table, with no email hashed on either side.
//!
//! A freed slot is reused only once every shard has applied the epoch that freed it, and a
//! reused slot starts from zero on every shard (`UserOp::Add { new_slot: true, .. }`).

use std::sync::Arc;

use shardray_wire::shadowsocks::{MasterKey, Method};

use crate::quota::QuotaCell;
use shardray_wire::trojan::KEY_LEN;
use uuid::Uuid;

/// How long a removed user's live sessions go on: a panel changes a user (its level, say) by
/// removing it and adding it again, and an add of the same user (same credentials, same email)
/// on the same inbound within this keeps its sessions, under the new level. New sessions with
/// a removed user's credentials are refused at once; without an add, its sessions close when
/// this ends.
pub const REMOVAL_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// The slot of a user without an email: upstream keeps no counters for those.
pub const NO_SLOT: u32 = u32::MAX;

/// What a shard looks a user up by: the key its protocol's handshake carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserId {
    /// A VLESS user's UUID.
    Uuid(Uuid),
    /// A Trojan user's key: the 56 hex digits of SHA-224(password), as on the wire.
    Trojan([u8; KEY_LEN]),
    /// A SOCKS or HTTP proxy account's key: SHA-256 over its username and password
    /// (`shardray_wire::socks::account_key`).
    Password([u8; shardray_wire::socks::ACCOUNT_KEY_LEN]),
    /// A classic Shadowsocks (AEAD) user: its method and master key (EVP_BytesToKey of the
    /// password), which open its first chunk.
    Shadowsocks(Method, MasterKey),
    /// A Shadowsocks 2022 user: its PSK (the inbound names the method).
    Shadowsocks2022(MasterKey),
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserId::Uuid(id) => write!(f, "{id}"),
            UserId::Trojan(key) => f.write_str(std::str::from_utf8(key).unwrap_or("?")),
            UserId::Password(key) => key.iter().try_for_each(|b| write!(f, "{b:02x}")),
            // Keys stay out of messages and logs.
            UserId::Shadowsocks(method, _) => write!(f, "a {method} key"),
            UserId::Shadowsocks2022(_) => f.write_str("a shadowsocks 2022 key"),
        }
    }
}

/// A user as the control thread resolved it for the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    /// The user's id (the hot-path key).
    pub id: UserId,
    /// The user's counter slot, or `NO_SLOT`.
    pub slot: u32,
    /// The user's policy level in this inbound.
    pub level: u32,
    /// A VLESS user with the Vision flow.
    pub vision: bool,
}

/// One step a shard takes on one inbound's user table. A change about users is resolved by
/// the control thread into these, so the shards need neither emails nor a second index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOp {
    /// Add the user (its id is new to the inbound).
    Add {
        /// The user.
        user: UserKey,
        /// The user's email, shared with the control thread's copy; `None` without an email.
        email: Option<Arc<str>>,
        /// The slot is newly assigned to this email: its counters start from zero.
        new_slot: bool,
    },
    /// Remove the user and close its live sessions.
    Remove {
        /// The user's id.
        id: UserId,
        /// The user's slot.
        slot: u32,
        /// No inbound lists the email any more: the shard forgets the slot's email.
        free_slot: bool,
    },
    /// Move the user to another level; live sessions go on under it.
    SetLevel {
        /// The user's id.
        id: UserId,
        /// The new level.
        level: u32,
    },
    /// Close the user's live sessions without removing it.
    Kick {
        /// The user's id.
        id: UserId,
    },
    /// Suspend the user (its live sessions close, new ones are refused as a wrong user's
    /// are) or resume it.
    Suspend {
        /// The user's id.
        id: UserId,
        /// Suspended from now on, or not.
        suspended: bool,
    },
    /// Give the slot's sessions this quota cell to count into (`None`: no quota any more).
    Quota {
        /// The user's slot.
        slot: u32,
        /// The cell, shared with the control thread and the other shards.
        cell: Option<Arc<QuotaCell>>,
    },
}
