//! How the registry resolves changes into the shards' user operations and counter slots.

use shardray_core::change::Change;
use shardray_core::slots::{UserId, UserKey, UserOp, NO_SLOT};
use shardray_core::spec::{Account, UserSpec};
use uuid::Uuid;

use super::UserSets;

fn id(n: u128) -> UserId {
    UserId::Uuid(Uuid::from_u128(n))
}

fn user(n: u128, email: &str, level: u32) -> UserSpec {
    UserSpec {
        account: Account::Vless(Uuid::from_u128(n), Default::default()),
        email: email.into(),
        level,
        quota: Default::default(),
    }
}

/// Inbounds `a` and `b`: alice in both (one slot), `bob@x` in a and `Bob@x` in b (two slots:
/// counters are named by the exact email), and a user without an email in b.
fn sets() -> UserSets {
    let text = format!(
        r#"{{
        "inbounds": [
            {{ "tag": "a", "listen": "127.0.0.1", "port": 20001, "protocol": "vless",
               "settings": {{ "decryption": "none", "clients": [
                 {{ "id": "{a1}", "email": "alice@x", "level": 1 }},
                 {{ "id": "{b1}", "email": "bob@x" }} ] }} }},
            {{ "tag": "b", "listen": "127.0.0.1", "port": 20002, "protocol": "vless",
               "settings": {{ "decryption": "none", "clients": [
                 {{ "id": "{a2}", "email": "alice@x", "level": 2 }},
                 {{ "id": "{b2}", "email": "Bob@x" }},
                 {{ "id": "{n}" }} ] }} }}
        ],
        "outbounds": [{{ "tag": "direct", "protocol": "freedom" }}]
    }}"#,
        a1 = id(1),
        b1 = id(2),
        a2 = id(3),
        b2 = id(4),
        n = id(5)
    );
    UserSets::from_config(&crate::config::load_str(&text).unwrap())
}

fn slot_of(sets: &UserSets, inbound: &str, email: &str) -> u32 {
    sets.inbound(inbound).unwrap().by_email(email).unwrap().slot
}

#[test]
fn an_email_in_two_inbounds_shares_one_slot_that_follows_the_first() {
    let mut sets = sets();
    let alice = slot_of(&sets, "a", "alice@x");
    assert_eq!(slot_of(&sets, "b", "ALICE@x"), alice);
    assert_ne!(slot_of(&sets, "a", "bob@x"), slot_of(&sets, "b", "Bob@x"));
    assert_eq!(sets.slots().len(), 3);
    assert_eq!(sets.slots().get(alice).unwrap().level, 1, "the first inbound's level");
    let ops = sets.initial_ops();
    assert_eq!((ops[0].len(), ops[1].len()), (2, 3));
    assert!(ops[1]
        .iter()
        .any(|op| matches!(op, UserOp::Add { user: UserKey { slot: NO_SLOT, .. }, email: None, new_slot: false })));

    // Leaving the first inbound: the slot stays, at b's level.
    let remove = Change::RemoveUsers { inbound: "a".into(), emails: vec!["Alice@X".into()] };
    let ops = sets.record(&remove, Some(7));
    assert_eq!(ops, [UserOp::Remove { id: id(1), slot: alice, free_slot: false }]);
    assert_eq!(sets.slots().get(alice).unwrap().level, 2);
    let set = Change::SetLevel { inbound: "b".into(), email: "alice@x".into(), level: 5 };
    assert_eq!(sets.record(&set, Some(8)), [UserOp::SetLevel { id: id(3), level: 5 }]);
    assert_eq!(sets.slots().get(alice).unwrap().level, 5);

    // Leaving the last: freed, and held for the removal's grace even once epoch 9 is applied
    // everywhere (`SlotBook` reuses it after both), so that the same user added back within
    // it gets its slot back, counters going on.
    let remove = Change::RemoveUsers { inbound: "b".into(), emails: vec!["alice@x".into()] };
    assert_eq!(sets.record(&remove, Some(9)), [UserOp::Remove { id: id(3), slot: alice, free_slot: true }]);
    assert!(sets.slots().get(alice).is_none());
    let add =
        |inbound: &str, n, email: &str| Change::AddUsers { inbound: inbound.into(), users: vec![user(n, email, 0)] };
    let ops = sets.record(&add("a", 10, "carol@x"), Some(10));
    assert!(matches!(&ops[..], [UserOp::Add { user, new_slot: true, .. }] if user.slot == 3));
    sets.slots.reclaim(9);
    let ops = sets.record(&add("a", 11, "dave@x"), Some(11));
    assert!(matches!(&ops[..], [UserOp::Add { user, new_slot: true, .. }] if user.slot != alice), "{ops:?}");
    // Another id is another user; the same one revives the slot.
    let ops = sets.record(&add("b", 30, "alice@x"), Some(12));
    assert!(matches!(&ops[..], [UserOp::Add { user, new_slot: true, .. }] if user.slot != alice), "{ops:?}");
    let remove = Change::RemoveUsers { inbound: "b".into(), emails: vec!["alice@x".into()] };
    sets.record(&remove, Some(13));
    let ops = sets.record(&add("b", 3, "alice@x"), Some(14));
    assert!(matches!(&ops[..], [UserOp::Add { user, new_slot: false, .. }] if user.slot == alice), "{ops:?}");
}

#[test]
fn replace_keeps_who_stays_and_resolves_the_rest() {
    let mut sets = sets();
    let bob = slot_of(&sets, "a", "bob@x");
    let replace = Change::ReplaceUsers {
        inbound: "a".into(),
        // bob stays (same id and email, new level); alice goes; erin is new.
        users: vec![user(2, "BOB@x", 4), user(20, "erin@x", 0)],
    };
    sets.check(&replace).unwrap();
    let ops = sets.record(&replace, Some(3));
    let alice = slot_of(&sets, "b", "alice@x");
    assert_eq!(ops[0], UserOp::Remove { id: id(1), slot: alice, free_slot: false });
    assert_eq!(ops[1], UserOp::SetLevel { id: id(2), level: 4 });
    assert!(
        matches!(&ops[2], UserOp::Add { user, email: Some(e), new_slot: true } if user.id == id(20) && &**e == "erin@x")
    );
    assert_eq!(ops.len(), 3);
    assert_eq!(slot_of(&sets, "a", "bob@x"), bob);
    let mut emails: Vec<String> = sets.inbound("a").unwrap().users.values().map(|u| u.email).collect();
    emails.sort();
    assert_eq!(emails, ["bob@x", "erin@x"]);
    assert_eq!(sets.slots().get(alice).unwrap().level, 2, "alice now counts at b's level");
}

#[test]
fn replacing_an_inbound_keeps_its_users_and_their_slots() {
    let mut sets = sets();
    let before: Vec<(String, u32)> =
        ["alice@x", "bob@x"].iter().map(|e| (e.to_string(), slot_of(&sets, "a", e))).collect();
    let mut spec = sets.inbound("a").unwrap().spec.as_ref().clone();
    spec.listen.set_port(20003);
    let change = Change::ReplaceInbound { spec: std::sync::Arc::new(spec), rebind: true };
    sets.check(&change).unwrap();
    let ops = sets.record(&change, Some(1));
    // Every user comes again with its slot, as a slot that already counts.
    assert_eq!(ops.len(), 2);
    for op in &ops {
        let UserOp::Add { user: UserKey { slot, .. }, new_slot, email } = op else { panic!("{op:?}") };
        assert!(!new_slot, "{op:?}");
        let email = email.as_deref().unwrap();
        assert_eq!(Some(*slot), before.iter().find(|(e, _)| e == email).map(|(_, s)| *s));
    }
    assert_eq!(sets.inbound("a").unwrap().spec.listen.port(), 20003);
    for (email, slot) in &before {
        assert_eq!(slot_of(&sets, "a", email), *slot);
    }
    // Another kind of account cannot replace it in place.
    let trojan = crate::config::load_str(
        r#"{ "inbounds": [{ "tag": "a", "listen": "127.0.0.1", "port": 1, "protocol": "trojan",
             "settings": { "clients": [] } }], "outbounds": [{ "protocol": "freedom" }] }"#,
    )
    .unwrap();
    let change = Change::ReplaceInbound { spec: std::sync::Arc::new(trojan.inbounds[0].clone()), rebind: true };
    assert!(sets.check(&change).is_err());
}

#[test]
fn a_quota_belongs_to_the_email_and_a_suspension_reaches_every_table() {
    use shardray_core::quota::{QuotaSpec, SuspendReason};
    let mut sets = sets();
    let alice = slot_of(&sets, "a", "alice@x");
    let spec = QuotaSpec { bytes: 100, expiry: 0 };
    let ops = sets.record(&Change::SetQuota { inbound: "b".into(), email: "alice@x".into(), quota: spec }, Some(1));
    let [UserOp::Quota { slot, cell: Some(cell) }] = &ops[..] else { panic!("{ops:?}") };
    assert_eq!((*slot, cell.spec()), (alice, spec));
    // Use counted on any core is the email's: at the quota, the user is to be suspended.
    cell.charge_down(100);
    assert_eq!(cell.breach(0), Some(SuspendReason::Quota));
    let suspend = Change::Suspend { inbound: "a".into(), email: "alice@x".into(), reason: Some(SuspendReason::Quota) };
    assert_eq!(sets.record(&suspend, Some(2)), [UserOp::Suspend { id: id(1), suspended: true }]);
    // A table built anew (a shard's start, a replaced inbound) gets the cell and the suspension.
    let ops = sets.initial_ops();
    assert!(ops[0].contains(&UserOp::Suspend { id: id(1), suspended: true }), "{:?}", ops[0]);
    assert!(ops[1].iter().any(|op| matches!(op, UserOp::Quota { slot, cell: Some(_) } if *slot == alice)));
    // The same email added to another inbound starts suspended there too.
    sets.apply(&Change::RemoveUsers { inbound: "b".into(), emails: vec!["alice@x".into()] }).unwrap();
    let ops = sets.record(&Change::AddUsers { inbound: "b".into(), users: vec![user(9, "alice@x", 0)] }, Some(3));
    assert!(ops.contains(&UserOp::Suspend { id: id(9), suspended: true }), "{ops:?}");
    // Cleared while suspended: the entry stays until the resume is recorded.
    let clear = Change::SetQuota { inbound: "a".into(), email: "alice@x".into(), quota: QuotaSpec::default() };
    assert_eq!(sets.record(&clear, Some(4)), [UserOp::Quota { slot: alice, cell: None }]);
    assert!(sets.slots().book().quota(alice).is_some());
    let resume = Change::Suspend { inbound: "a".into(), email: "alice@x".into(), reason: None };
    assert_eq!(sets.record(&resume, Some(5)), [UserOp::Suspend { id: id(1), suspended: false }]);
    assert!(sets.slots().book().quota(alice).is_none());
}

#[test]
fn a_user_back_within_its_grace_keeps_its_quota_cell_and_use() {
    use shardray_core::quota::QuotaSpec;
    let mut sets = sets();
    let bob = slot_of(&sets, "a", "bob@x");
    let spec = QuotaSpec { bytes: 1000, expiry: 0 };
    let ops = sets.record(&Change::SetQuota { inbound: "a".into(), email: "bob@x".into(), quota: spec }, Some(1));
    let [UserOp::Quota { cell: Some(cell), .. }] = &ops[..] else { panic!("{ops:?}") };
    cell.charge_down(600);
    let remove = Change::RemoveUsers { inbound: "a".into(), emails: vec!["bob@x".into()] };
    assert_eq!(sets.record(&remove, Some(2)), [UserOp::Remove { id: id(2), slot: bob, free_slot: true }]);

    // Added back (the same id and email, naming no quota): the shards get the very cell its
    // kept sessions count into, its use going on.
    let add = Change::AddUsers { inbound: "a".into(), users: vec![user(2, "bob@x", 0)] };
    let ops = sets.record(&add, Some(3));
    let [UserOp::Add { new_slot: false, .. }, UserOp::Quota { slot, cell: Some(back) }] = &ops[..] else {
        panic!("{ops:?}")
    };
    assert_eq!(*slot, bob);
    assert!(std::sync::Arc::ptr_eq(back, cell), "a new cell: the use starts over");
    assert_eq!(sets.slots().book().quota(bob).map(|q| q.cell.used()), Some([0, 600]));

    // Naming a quota of its own, the cell keeps its use too.
    sets.record(&remove, Some(4));
    let raised = UserSpec { quota: QuotaSpec { bytes: 2000, expiry: 0 }, ..user(2, "bob@x", 0) };
    let ops = sets.record(&Change::AddUsers { inbound: "a".into(), users: vec![raised] }, Some(5));
    let [_, UserOp::Quota { cell: Some(back), .. }] = &ops[..] else { panic!("{ops:?}") };
    assert!(std::sync::Arc::ptr_eq(back, cell));
    assert_eq!((back.spec().bytes, back.used()), (2000, [0, 600]));
}
