//! Embedded migrations for PostgreSQL, applied under a session advisory lock so many
//! processes starting at once migrate exactly once.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use crate::error::Result;

/// `(version, name, sql)`, in order. Never edit an applied migration: add a new one.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "analytics",
        include_str!("../../../../migrations/postgres/0002_analytics.sql"),
    ),
    (
        3,
        "lease_index",
        include_str!("../../../../migrations/postgres/0003_lease_index.sql"),
    ),
    (
        4,
        "hot_path",
        include_str!("../../../../migrations/postgres/0004_hot_path.sql"),
    ),
    (
        5,
        "task_ids",
        include_str!("../../../../migrations/postgres/0005_task_ids.sql"),
    ),
    (
        6,
        "event_order",
        include_str!("../../../../migrations/postgres/0006_event_order.sql"),
    ),
    (
        7,
        "bounded_timeouts",
        include_str!("../../../../migrations/postgres/0007_bounded_timeouts.sql"),
    ),
    (
        8,
        "batch_create",
        include_str!("../../../../migrations/postgres/0008_batch_create.sql"),
    ),
    (
        9,
        "scheduling",
        include_str!("../../../../migrations/postgres/0009_scheduling.sql"),
    ),
    (
        10,
        "limits",
        include_str!("../../../../migrations/postgres/0010_limits.sql"),
    ),
    (
        11,
        "signals",
        include_str!("../../../../migrations/postgres/0011_signals.sql"),
    ),
    (
        12,
        "children",
        include_str!("../../../../migrations/postgres/0012_children.sql"),
    ),
    (
        13,
        "fewer_rows",
        include_str!("../../../../migrations/postgres/0013_fewer_rows.sql"),
    ),
    (
        14,
        "paired_transitions",
        include_str!("../../../../migrations/postgres/0014_paired_transitions.sql"),
    ),
];

pub async fn run(conn: &mut PgConnection, lock_key: i64) -> Result<u32> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    let outcome = apply(conn).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *conn)
        .await?;
    outcome
}

async fn apply(conn: &mut PgConnection) -> Result<u32> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tasker_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let done = sqlx::query("SELECT 1 FROM tasker_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
        if done.is_some() {
            continue;
        }
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO tasker_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(crate::time::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied PostgreSQL migration");
        applied += 1;
    }
    let _ = sqlx::query("SELECT 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get::<i32, _>(0);
    Ok(applied)
}
