//! Embedded migrations for SQLite, applied in order inside one transaction each.

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use crate::error::Result;

/// `(version, name, sql)`, in order. Never edit an applied migration: add a new one.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../../../migrations/sqlite/0001_init.sql"),
)];

pub async fn run(conn: &mut SqliteConnection) -> Result<u32> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tasker_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("SELECT 1 FROM tasker_migrations WHERE version = ?1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            tx.rollback().await?;
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO tasker_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
        )
        .bind(version)
        .bind(name)
        .bind(crate::time::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied SQLite migration");
        applied += 1;
    }
    Ok(applied)
}
