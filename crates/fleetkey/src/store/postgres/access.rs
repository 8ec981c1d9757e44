//! Tokens and idempotency records in PostgreSQL (schema version 2, `0002_access.sql`).

use postgres::Row;

use super::{PgTx, check_text, corrupt};
use crate::access::{ApiToken, IdempotencyRecord, Role};
use crate::error::StoreError;
use crate::model::WrappedKey;

const TOKEN_COLUMNS: &str =
    "id, hash, principal, role, subject, fleet, created_at, created_by, expires_at, revoked_at";

fn check_token(t: &ApiToken) -> Result<(), StoreError> {
    for (field, value) in [
        ("token id", t.id.as_str()),
        ("token principal", &t.principal),
        ("token fleet", &t.fleet),
        ("token issuer", &t.created_by),
        ("token subject", t.subject.as_deref().unwrap_or("")),
    ] {
        check_text(field, value)?;
    }
    Ok(())
}

fn token_from_row(r: &Row) -> Result<ApiToken, StoreError> {
    let get = |e: postgres::Error| corrupt("token", e);
    let hash: Vec<u8> = r.try_get(1).map_err(get)?;
    let role: String = r.try_get(3).map_err(get)?;
    Ok(ApiToken {
        id: r.try_get(0).map_err(get)?,
        hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))?,
        principal: r.try_get(2).map_err(get)?,
        role: Role::parse(&role).map_err(|e| corrupt("token role", e))?,
        subject: r.try_get(4).map_err(get)?,
        fleet: r.try_get(5).map_err(get)?,
        created_at: r.try_get(6).map_err(get)?,
        created_by: r.try_get(7).map_err(get)?,
        expires_at: r.try_get(8).map_err(get)?,
        revoked_at: r.try_get(9).map_err(get)?,
    })
}

impl PgTx<'_, '_> {
    pub(super) fn insert_token_row(&mut self, t: &ApiToken) -> Result<(), StoreError> {
        check_token(t)?;
        let sql = format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING"
        );
        let inserted = self.execute(
            "insert token",
            &sql,
            &[
                &t.id,
                &&t.hash[..],
                &t.principal,
                &t.role.name(),
                &t.subject,
                &t.fleet,
                &t.created_at,
                &t.created_by,
                &t.expires_at,
                &t.revoked_at,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(format!("token {}", t.id)));
        }
        Ok(())
    }

    pub(super) fn update_token_row(&mut self, t: &ApiToken) -> Result<(), StoreError> {
        check_token(t)?;
        // A hash taken by another token: refused as a duplicate, without aborting the transaction.
        let clash = self.query_opt(
            "update token",
            "SELECT 1 FROM api_tokens WHERE hash = $1 AND id <> $2",
            &[&&t.hash[..], &t.id],
        )?;
        if clash.is_some() {
            return Err(StoreError::Duplicate(format!("token {}", t.id)));
        }
        let changed = self.execute(
            "update token",
            "UPDATE api_tokens SET hash = $2, principal = $3, role = $4, subject = $5, fleet = $6, \
             created_at = $7, created_by = $8, expires_at = $9, revoked_at = $10 WHERE id = $1",
            &[
                &t.id,
                &&t.hash[..],
                &t.principal,
                &t.role.name(),
                &t.subject,
                &t.fleet,
                &t.created_at,
                &t.created_by,
                &t.expires_at,
                &t.revoked_at,
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("token {}", t.id)));
        }
        Ok(())
    }

    pub(super) fn token_row(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        check_text("token id", id)?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        self.query_opt("read token", &sql, &[&id])?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    pub(super) fn token_row_by_hash(
        &mut self,
        hash: &[u8; 32],
    ) -> Result<Option<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1");
        self.query_opt("read token", &sql, &[&&hash[..]])?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    pub(super) fn token_rows(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        self.query("read tokens", &sql, &[])?
            .iter()
            .map(token_from_row)
            .collect()
    }

    pub(super) fn idempotency_row(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        check_text("principal", principal)?;
        check_text("idempotency key", key)?;
        let Some(r) = self.query_opt(
            "read idempotency key",
            "SELECT fingerprint, created_at, status, response FROM idempotency \
             WHERE principal = $1 AND key = $2",
            &[&principal, &key],
        )?
        else {
            return Ok(None);
        };
        let get = |e: postgres::Error| corrupt("idempotency record", e);
        let fingerprint: Vec<u8> = r.try_get(0).map_err(get)?;
        let status: Option<i32> = r.try_get(2).map_err(get)?;
        let body: Option<Vec<u8>> = r.try_get(3).map_err(get)?;
        let bad = |what: &str| StoreError::Corrupt(format!("idempotency record: {what}"));
        let response = match (status, body) {
            (Some(s), Some(b)) => {
                Some((u16::try_from(s).map_err(|_| bad("status"))?, WrappedKey(b)))
            }
            (None, None) => None,
            _ => return Err(bad("status and response must be both set or both empty")),
        };
        Ok(Some(IdempotencyRecord {
            principal: principal.to_owned(),
            key: key.to_owned(),
            fingerprint: fingerprint
                .try_into()
                .map_err(|_| bad("fingerprint is not 32 bytes"))?,
            created_at: r.try_get(1).map_err(get)?,
            response,
        }))
    }

    pub(super) fn write_idempotency_row(
        &mut self,
        r: &IdempotencyRecord,
        insert: bool,
    ) -> Result<(), StoreError> {
        check_text("principal", &r.principal)?;
        check_text("idempotency key", &r.key)?;
        let status = r.response.as_ref().map(|(s, _)| i32::from(*s));
        let body = r.response.as_ref().map(|(_, b)| &b.0[..]);
        let params: [&(dyn postgres::types::ToSql + Sync); 6] = [
            &r.principal,
            &r.key,
            &&r.fingerprint[..],
            &r.created_at,
            &status,
            &body,
        ];
        if insert {
            let n = self.execute(
                "insert idempotency key",
                "INSERT INTO idempotency (principal, key, fingerprint, created_at, status, response) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &params,
            )?;
            if n == 0 {
                return Err(StoreError::Duplicate(format!("idempotency key {}", r.key)));
            }
        } else {
            let n = self.execute(
                "update idempotency key",
                "UPDATE idempotency SET fingerprint = $3, created_at = $4, status = $5, response = $6 \
                 WHERE principal = $1 AND key = $2",
                &params,
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("idempotency key {}", r.key)));
            }
        }
        Ok(())
    }

    pub(super) fn delete_idempotency_row(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        check_text("principal", principal)?;
        check_text("idempotency key", key)?;
        self.execute(
            "delete idempotency key",
            "DELETE FROM idempotency WHERE principal = $1 AND key = $2",
            &[&principal, &key],
        )
        .map(drop)
    }
}
