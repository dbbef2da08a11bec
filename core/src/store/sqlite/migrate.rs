//! Embedded migrations for SQLite, applied in order, one transaction each.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::Result;

/// `(version, name, sql)`, in order. Never edit an applied migration: add a new one.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "bounded_timeouts",
        include_str!("../../../../migrations/sqlite/0002_bounded_timeouts.sql"),
    ),
    (
        3,
        "scheduling",
        include_str!("../../../../migrations/sqlite/0003_scheduling.sql"),
    ),
    (
        4,
        "limits",
        include_str!("../../../../migrations/sqlite/0004_limits.sql"),
    ),
    (
        5,
        "signals",
        include_str!("../../../../migrations/sqlite/0005_signals.sql"),
    ),
    (
        6,
        "children",
        include_str!("../../../../migrations/sqlite/0006_children.sql"),
    ),
];

pub fn run(conn: &mut Connection) -> Result<u32> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tasker_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = tx
            .query_row(
                "SELECT 1 FROM tasker_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO tasker_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, crate::time::now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, name, "applied SQLite migration");
        applied += 1;
    }
    Ok(applied)
}
