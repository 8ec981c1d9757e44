//! Tokens and idempotency records in SQLite (schema version 2, `0002_access.sql`).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{backend, is_unique_violation};
use crate::access::{ApiToken, IdempotencyRecord, Role};
use crate::error::StoreError;
use crate::model::WrappedKey;

const TOKEN_COLUMNS: &str =
    "id, hash, principal, role, subject, fleet, created_at, created_by, expires_at, revoked_at";

pub(super) fn insert_token(conn: &Connection, t: &ApiToken) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.execute(params![
                t.id,
                &t.hash[..],
                t.principal,
                t.role.name(),
                t.subject,
                t.fleet,
                t.created_at,
                t.created_by,
                t.expires_at,
                t.revoked_at
            ])
        })
        .map(drop)
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate(format!("token {}", t.id))
            } else {
                backend("insert token", e)
            }
        })
}

pub(super) fn update_token(conn: &Connection, t: &ApiToken) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE api_tokens SET hash = ?2, principal = ?3, role = ?4, subject = ?5, fleet = ?6, \
             created_at = ?7, created_by = ?8, expires_at = ?9, revoked_at = ?10 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.id,
                &t.hash[..],
                t.principal,
                t.role.name(),
                t.subject,
                t.fleet,
                t.created_at,
                t.created_by,
                t.expires_at,
                t.revoked_at
            ])
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Duplicate(format!("token {}", t.id))
            } else {
                backend("update token", e)
            }
        })?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("token {}", t.id)));
    }
    Ok(())
}

fn token_from_row(r: &Row<'_>) -> Result<ApiToken, StoreError> {
    let err = |e| backend("read token", e);
    let hash: Vec<u8> = r.get(1).map_err(err)?;
    let role: String = r.get(3).map_err(err)?;
    Ok(ApiToken {
        id: r.get(0).map_err(err)?,
        hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))?,
        principal: r.get(2).map_err(err)?,
        role: Role::parse(&role).map_err(|e| StoreError::Corrupt(format!("token role: {e}")))?,
        subject: r.get(4).map_err(err)?,
        fleet: r.get(5).map_err(err)?,
        created_at: r.get(6).map_err(err)?,
        created_by: r.get(7).map_err(err)?,
        expires_at: r.get(8).map_err(err)?,
        revoked_at: r.get(9).map_err(err)?,
    })
}

fn tokens_where(
    conn: &Connection,
    clause: &str,
    param: &dyn rusqlite::ToSql,
) -> Result<Vec<ApiToken>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens {clause}");
    let err = |e| backend("read tokens", e);
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let params: &[&dyn rusqlite::ToSql] = if clause.contains('?') { &[param] } else { &[] };
    let mut rows = stmt.query(params).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        out.push(token_from_row(row)?);
    }
    Ok(out)
}

pub(super) fn token(conn: &Connection, id: &str) -> Result<Option<ApiToken>, StoreError> {
    Ok(tokens_where(conn, "WHERE id = ?1", &id)?.pop())
}

pub(super) fn token_by_hash(
    conn: &Connection,
    hash: &[u8; 32],
) -> Result<Option<ApiToken>, StoreError> {
    Ok(tokens_where(conn, "WHERE hash = ?1", &&hash[..])?.pop())
}

pub(super) fn tokens(conn: &Connection) -> Result<Vec<ApiToken>, StoreError> {
    tokens_where(conn, "ORDER BY created_at, id", &0)
}

pub(super) fn idempotency(
    conn: &Connection,
    principal: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let err = |e| backend("read idempotency key", e);
    let row = conn
        .prepare_cached(
            "SELECT fingerprint, created_at, status, response FROM idempotency \
             WHERE principal = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![principal, key], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(err)?;
    let Some((fingerprint, created_at, status, response)) = row else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt(format!("idempotency record: {what}"));
    let response = match (status, response) {
        (Some(s), Some(body)) => Some((
            u16::try_from(s).map_err(|_| corrupt("status"))?,
            WrappedKey(body),
        )),
        (None, None) => None,
        _ => {
            return Err(corrupt(
                "status and response must be both set or both empty",
            ));
        }
    };
    Ok(Some(IdempotencyRecord {
        principal: principal.to_owned(),
        key: key.to_owned(),
        fingerprint: fingerprint
            .try_into()
            .map_err(|_| corrupt("fingerprint is not 32 bytes"))?,
        created_at,
        response,
    }))
}

pub(super) fn insert_idempotency(
    conn: &Connection,
    r: &IdempotencyRecord,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO idempotency (principal, key, fingerprint, created_at, status, response) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            r.principal,
            r.key,
            &r.fingerprint[..],
            r.created_at,
            r.response.as_ref().map(|(s, _)| i64::from(*s)),
            r.response.as_ref().map(|(_, b)| &b.0[..]),
        ])
    })
    .map(drop)
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Duplicate(format!("idempotency key {}", r.key))
        } else {
            backend("insert idempotency key", e)
        }
    })
}

pub(super) fn update_idempotency(
    conn: &Connection,
    r: &IdempotencyRecord,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE idempotency SET fingerprint = ?3, created_at = ?4, status = ?5, response = ?6 \
             WHERE principal = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                r.principal,
                r.key,
                &r.fingerprint[..],
                r.created_at,
                r.response.as_ref().map(|(s, _)| i64::from(*s)),
                r.response.as_ref().map(|(_, b)| &b.0[..]),
            ])
        })
        .map_err(|e| backend("update idempotency key", e))?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("idempotency key {}", r.key)));
    }
    Ok(())
}

pub(super) fn delete_idempotency(
    conn: &Connection,
    principal: &str,
    key: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE principal = ?1 AND key = ?2")
        .and_then(|mut s| s.execute(params![principal, key]))
        .map(drop)
        .map_err(|e| backend("delete idempotency key", e))
}
