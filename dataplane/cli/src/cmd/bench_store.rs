//! Where `linerate bench` keeps its history: a JSON-lines file (the default, under `target/`)
//! or, with `--database URL`, a PostgreSQL table, so a team's runs from many machines land in
//! one place and can be queried with SQL.
//!
//! The table holds one row per sample set, a column per field of
//! [`Record`](linerate_perf::record::Record) (`time` a `timestamptz`, `machine` and `params`
//! `jsonb`, `samples` a `double precision[]`), made on first use. Rows go in and come out as
//! the same JSON the file holds (`jsonb_populate_recordset` in, `jsonb_build_object` out), so
//! both stores read and write one format and its checks.

use anyhow::{Context, Result, bail};
use linerate_perf::record::{self, Record};
use sqlx::AssertSqlSafe;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the history lives unless `--history` says otherwise.
const DEFAULT_HISTORY: &str = "target/linerate-bench/history.jsonl";

/// The table unless `--table` says otherwise.
const DEFAULT_TABLE: &str = "linerate_bench_history";

#[derive(clap::Args, Clone)]
pub struct HistoryFile {
    /// The history file (JSON lines).
    #[arg(long, default_value = DEFAULT_HISTORY)]
    pub history: PathBuf,
    /// Keep the history in this PostgreSQL database instead of the file
    /// (postgres://user:password@host/db).
    #[arg(long, env = "LINERATE_BENCH_DATABASE")]
    pub database: Option<String>,
    /// The table in --database (made if missing).
    #[arg(long, env = "LINERATE_BENCH_TABLE", default_value = DEFAULT_TABLE, value_parser = parse_table)]
    pub table: String,
}

/// A table name we can put in SQL as it is: a lower-case identifier of at most 63 bytes.
fn parse_table(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}': a table name is lower-case letters, digits and _, at most 63, not starting \
             with a digit"
        ))
    }
}

impl HistoryFile {
    /// The database URL, unless none or an empty one was given.
    pub fn database(&self) -> Option<String> {
        self.database.clone().filter(|u| !u.is_empty())
    }

    /// What the history is, for messages.
    pub fn describe(&self) -> String {
        match self.database() {
            Some(_) => format!("table {} in the database", self.table),
            None => self.history.display().to_string(),
        }
    }

    /// Every record, oldest first.
    pub fn load(&self) -> Result<Vec<Record>> {
        match self.database() {
            Some(url) => block_on(pg_load(&url, &self.table)),
            None => load_file(&self.history),
        }
    }

    /// Adds `records` at the end.
    pub fn append(&self, records: &[Record]) -> Result<()> {
        match self.database() {
            Some(url) => block_on(pg_append(&url, &self.table, records)),
            None => append_file(&self.history, records),
        }
    }
}

fn load_file(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the history {}", path.display()))?;
    record::parse_history(&text).map_err(|e| anyhow::anyhow!("history {}: {e}", path.display()))
}

/// Appends `records` to the history at `path` (made, with its directory, if missing).
fn append_file(path: &Path, records: &[Record]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    for r in records {
        text.push_str(&record::to_line(r));
        text.push('\n');
    }
    // One write, so a history appended by two runs at once keeps whole lines.
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the database")?
        .block_on(f)
}

/// The columns in the order of the record's fields (`id` orders the rows).
const COLUMNS: &str = "schema, run, commit, dirty, time, machine, suite, benchmark, params, \
                       measure, unit, direction, samples, value, lower_value, upper_value";

async fn connect(url: &str, table: &str) -> Result<sqlx::PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to the history database")?;
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id bigserial PRIMARY KEY,
            schema integer NOT NULL,
            run text NOT NULL,
            commit text NOT NULL,
            dirty boolean NOT NULL,
            time timestamptz NOT NULL,
            machine jsonb NOT NULL DEFAULT '{{}}',
            suite text NOT NULL,
            benchmark text NOT NULL,
            params jsonb NOT NULL DEFAULT '{{}}',
            measure text NOT NULL,
            unit text NOT NULL,
            direction text NOT NULL CHECK (direction IN ('higher', 'lower')),
            samples double precision[] NOT NULL CHECK (cardinality(samples) > 0),
            value double precision NOT NULL,
            lower_value double precision NOT NULL,
            upper_value double precision NOT NULL
        )"
    );
    sqlx::query(AssertSqlSafe(ddl))
        .execute(&pool)
        .await
        .with_context(|| format!("making the table {table}"))?;
    // The table name is an identifier checked by `parse_table`.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE INDEX IF NOT EXISTS {table}_run ON {table} (run)"
    )))
    .execute(&pool)
    .await
    .with_context(|| format!("indexing the table {table}"))?;
    Ok(pool)
}

async fn pg_load(url: &str, table: &str) -> Result<Vec<Record>> {
    let pool = connect(url, table).await?;
    // Back to the file's JSON, so one parser (and its checks) reads both stores.
    let q = format!(
        "SELECT jsonb_build_object(
            'schema', schema, 'run', run, 'commit', commit, 'dirty', dirty,
            'time', to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
            'machine', machine, 'suite', suite, 'benchmark', benchmark, 'params', params,
            'measure', measure, 'unit', unit, 'direction', direction,
            'samples', to_jsonb(samples), 'value', value, 'lower_value', lower_value,
            'upper_value', upper_value)::text
         FROM {table} ORDER BY id"
    );
    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(q))
        .fetch_all(&pool)
        .await
        .with_context(|| format!("reading the table {table}"))?;
    pool.close().await;
    record::parse_history(&rows.join("\n")).map_err(|e| anyhow::anyhow!("table {table}, row {e}"))
}

async fn pg_append(url: &str, table: &str, records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(records).context("encoding the records")?;
    let pool = connect(url, table).await?;
    let q = format!(
        "INSERT INTO {table} ({COLUMNS})
         SELECT {COLUMNS} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
    );
    let done = sqlx::query(AssertSqlSafe(q))
        .bind(json)
        .execute(&pool)
        .await
        .with_context(|| format!("adding {} records to the table {table}", records.len()))?;
    pool.close().await;
    if done.rows_affected() != records.len() as u64 {
        bail!(
            "table {table}: {} of {} records added",
            done.rows_affected(),
            records.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(parse_table("linerate_bench_history").is_ok());
        assert!(parse_table("t2").is_ok());
        for bad in ["", "2t", "T", "a-b", "a;drop table x", &"x".repeat(64)] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
    }
}
