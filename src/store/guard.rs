//! What `tally sql` may run: exactly one statement, and without `--write`
//! only one that reads the store.
//!
//! DuckDB's `prepare` runs every statement of a string but the last, so the
//! count is checked before DuckDB sees the text. A read is recognised by
//! DuckDB's own parser (`json_serialize_sql` serialises SELECT statements
//! only) and its syntax tree is walked: every table it names must be a table
//! or view of the store (a quoted path such as `FROM '/etc/passwd'` would
//! otherwise be read as a file), and every table function must be on a short
//! list of functions that read nothing outside the store (no `read_csv`,
//! `glob`, `query`, …). The read then runs in a read-only transaction.

use super::{Result, StoreError};
use duckdb::Connection;
use serde_json::Value;
use std::collections::HashSet;

/// Table functions a read-only statement may call: they compute values or
/// describe the store, and never touch a file, the network or other SQL.
const SAFE_TABLE_FUNCTIONS: &[&str] = &[
    "range",
    "generate_series",
    "unnest",
    "json_each",
    "json_tree",
    "duckdb_tables",
    "duckdb_views",
    "duckdb_columns",
    "duckdb_schemas",
    "duckdb_types",
    "duckdb_indexes",
    "duckdb_constraints",
    "duckdb_functions",
    "duckdb_keywords",
    "pragma_table_info",
    "pragma_storage_info",
    "pragma_database_size",
    "pragma_version",
];

/// Schemas whose views a read may name besides the store's own tables.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "pg_catalog"];

/// Splits SQL text into its statements at top-level semicolons, skipping
/// quoted strings, quoted identifiers, dollar-quoted strings and comments.
/// Empty statements (`;;`, trailing `;`, comments or whitespace only, in
/// Rust's sense of whitespace, which includes `\u{b}` and `\u{a0}`) are
/// dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut has_code = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                i = skip_quoted(bytes, i);
                has_code = true;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = line_end(bytes, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
                continue;
            }
            b'$' => {
                if let Some(end) = skip_dollar_quoted(sql, i) {
                    i = end;
                    has_code = true;
                    continue;
                }
            }
            b';' => {
                if has_code {
                    push_statement(&mut statements, &sql[start..i]);
                }
                start = i + 1;
                has_code = false;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        push_statement(&mut statements, &sql[start..]);
    }
    statements
}

/// Adds `text` trimmed, unless nothing but whitespace is left of it (a byte
/// such as `\u{b}` is not ASCII whitespace to the scan but is to `trim`).
fn push_statement<'a>(statements: &mut Vec<&'a str>, text: &'a str) {
    let text = text.trim();
    if !text.is_empty() {
        statements.push(text);
    }
}

/// The index after a `'…'` or `"…"` run starting at `i` (doubled quotes
/// escape themselves); the end of the text if it is unterminated.
fn skip_quoted(bytes: &[u8], mut i: usize) -> usize {
    let quote = bytes[i];
    i += 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    i
}

fn line_end(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| from + p)
}

/// The index after a `$tag$…$tag$` string starting at `i`, if one starts there.
fn skip_dollar_quoted(sql: &str, i: usize) -> Option<usize> {
    let rest = &sql[i + 1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    if !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let delimiter = &sql[i..i + tag_len + 2];
    let body = i + delimiter.len();
    Some(
        sql[body..]
            .find(delimiter)
            .map_or(sql.len(), |p| body + p + delimiter.len()),
    )
}

/// Checks `query` before it runs: one statement; a read unless `write`.
pub fn check(conn: &Connection, query: &str, write: bool) -> Result<()> {
    match split_statements(query).len() {
        0 => return Err(invalid("the query is empty")),
        1 => {}
        n => {
            return Err(invalid(format!(
                "the query holds {n} statements; tally sql runs exactly one"
            )))
        }
    }
    if write {
        return Ok(());
    }
    let parsed: String = conn.query_row("SELECT json_serialize_sql(?::VARCHAR)", [query], |r| {
        r.get(0)
    })?;
    let tree: Value = serde_json::from_str(&parsed)
        .map_err(|e| invalid(format!("cannot read DuckDB's parse of the query: {e}")))?;
    if tree["error"] == Value::Bool(true) {
        let why = tree["error_message"].as_str().unwrap_or_default();
        return Err(if why.contains("Only SELECT") {
            invalid(
                "tally sql only reads unless --write is given: this statement is not a \
                 query (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE); add --write to change data",
            )
        } else {
            invalid(why.to_owned())
        });
    }
    let known = store_relations(conn)?;
    let mut ctes = HashSet::new();
    collect_ctes(&tree, &mut ctes);
    refuse_outside_reads(&tree, &known, &ctes)
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Invalid(message.into())
}

/// Lower-cased names of the store's tables and views.
fn store_relations(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare(
        "SELECT lower(table_name) FROM duckdb_tables() WHERE NOT internal \
         UNION SELECT lower(view_name) FROM duckdb_views() WHERE NOT internal",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<duckdb::Result<HashSet<_>>>()?;
    Ok(names)
}

fn collect_ctes(node: &Value, into: &mut HashSet<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(entries)) = map.get("cte_map").and_then(|c| c.get("map")) {
                for e in entries {
                    if let Some(name) = e["key"].as_str() {
                        into.insert(name.to_lowercase());
                    }
                }
            }
            map.values().for_each(|v| collect_ctes(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ctes(v, into)),
        _ => {}
    }
}

/// Walks the parse tree and refuses any table reference that is not the
/// store's, and any table function not on [`SAFE_TABLE_FUNCTIONS`].
fn refuse_outside_reads(
    node: &Value,
    known: &HashSet<String>,
    ctes: &HashSet<String>,
) -> Result<()> {
    match node {
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("TABLE_FUNCTION") => {
                    let name = map["function"]["function_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase();
                    if !SAFE_TABLE_FUNCTIONS.contains(&name.as_str()) {
                        return Err(invalid(format!(
                            "tally sql does not run the table function {name}() without --write: \
                             it can read files or run other SQL"
                        )));
                    }
                }
                Some("BASE_TABLE") => check_table(map, known, ctes)?,
                _ => {}
            }
            for v in map.values() {
                refuse_outside_reads(v, known, ctes)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| refuse_outside_reads(v, known, ctes)),
        _ => Ok(()),
    }
}

fn check_table(
    map: &serde_json::Map<String, Value>,
    known: &HashSet<String>,
    ctes: &HashSet<String>,
) -> Result<()> {
    let text = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default();
    let (catalog, schema) = (text("catalog_name"), text("schema_name").to_lowercase());
    let table = text("table_name").to_lowercase();
    let system = SYSTEM_SCHEMAS.contains(&schema.as_str()) || schema == "system";
    let ours = (schema.is_empty() || schema == "main")
        && (known.contains(&table) || ctes.contains(&table));
    if catalog.is_empty() && (ours || system) {
        return Ok(());
    }
    Err(invalid(format!(
        "{} is not a table of the store; tally sql reads only the store's tables \
         (events, duplicates, sites, …) without --write",
        text("table_name")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        assert_eq!(split_statements("SELECT 1"), ["SELECT 1"]);
        assert_eq!(split_statements("SELECT 1;"), ["SELECT 1"]);
        assert_eq!(split_statements(" ; ;-- c\n"), Vec::<&str>::new());
        assert_eq!(split_statements("\u{b};\u{a0}"), Vec::<&str>::new());
        assert_eq!(split_statements("\u{b}SELECT 1\u{a0};"), ["SELECT 1"]);
        assert_eq!(
            split_statements("SELECT ';' AS a, \"x;y\" FROM t; SELECT 2"),
            ["SELECT ';' AS a, \"x;y\" FROM t", "SELECT 2"]
        );
        assert_eq!(
            split_statements("SELECT 'it''s;' -- ; not\n; /* ; */ SELECT $q$;$q$"),
            ["SELECT 'it''s;' -- ; not", "/* ; */ SELECT $q$;$q$"]
        );
        assert_eq!(
            split_statements(
                "COMMIT; CREATE TABLE pwned AS SELECT 42; BEGIN TRANSACTION; SELECT 1"
            )
            .len(),
            4
        );
        assert_eq!(
            split_statements("SELECT 'unterminated;"),
            ["SELECT 'unterminated;"]
        );
    }

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&c).unwrap();
        c
    }

    #[test]
    fn reads_of_the_store_pass() {
        let c = store();
        for q in [
            "SELECT count(*) FROM events",
            "FROM events SELECT site",
            "WITH t AS (SELECT 1 AS x) SELECT * FROM t",
            "SELECT * FROM main.duplicates d JOIN events e USING (site)",
            "DESCRIBE events",
            "SHOW TABLES",
            "SUMMARIZE events",
            "SELECT * FROM range(3)",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM duckdb_columns() WHERE table_name = 'events'",
            "SELECT 1;",
        ] {
            check(&c, q, false).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    }

    #[test]
    fn writes_files_and_side_doors_are_refused_without_write() {
        let c = store();
        for q in [
            "COMMIT; CREATE TABLE pwned AS SELECT 42; BEGIN TRANSACTION; SELECT 1",
            "CREATE TABLE pwned AS SELECT 42",
            "COPY events TO '/tmp/x.csv'",
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT (SELECT count(*) FROM read_text('/etc/passwd'))",
            "FROM '/etc/passwd'",
            "SELECT * FROM 'x.parquet'",
            "ATTACH '/tmp/other.duckdb'",
            "SET GLOBAL threads = 1",
            "INSTALL httpfs",
            "LOAD httpfs",
            "PRAGMA enable_profiling",
            "SELECT * FROM query('CREATE TABLE x AS SELECT 1')",
            "SELECT * FROM glob('/etc/*')",
            "DESCRIBE '/etc/passwd'",
            "SELECT * FROM other.main.events",
            "",
        ] {
            assert!(check(&c, q, false).is_err(), "{q} should be refused");
        }
    }

    #[test]
    fn write_allows_one_statement_of_any_kind() {
        let c = store();
        check(&c, "CREATE TABLE x AS SELECT 1", true).unwrap();
        assert!(check(&c, "CREATE TABLE x AS SELECT 1; SELECT 2", true).is_err());
    }

    proptest::proptest! {
        #[test]
        fn splitting_never_panics_and_never_invents_statements(sql in ".{0,300}") {
            let parts = split_statements(&sql);
            proptest::prop_assert!(parts.len() <= sql.matches(';').count() + 1);
            proptest::prop_assert!(parts.iter().all(|p| !p.trim().is_empty()));
        }
    }
}
