//! Schema versions as both stores keep them: the version in `meta` under [`VERSION_KEY`], and
//! version `n` reached by applying the store's migrations `[..n]` in order.

use crate::error::StoreError;

/// The `meta` key of the schema version.
pub(crate) const VERSION_KEY: &str = "store.schema_version";

/// The stored version: `Some(Some(v))` when `meta` holds an integer, `Some(None)` when it holds
/// something else, `None` when the key is missing (in a store that has a `meta` table).
pub(crate) fn stored_version(found: Option<Option<i64>>) -> Result<i64, StoreError> {
    match found {
        Some(Some(v)) if v >= 1 => Ok(v),
        Some(_) => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is not a positive integer"
        ))),
        None => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is missing"
        ))),
    }
}

/// The migrations that bring a schema at version `found` to the newest of `migrations`, each
/// with the version it reaches; a newer schema than this fleetkey knows is
/// [`StoreError::Schema`].
pub(crate) fn pending(
    found: i64,
    migrations: &'static [&'static str],
) -> Result<impl Iterator<Item = (i64, &'static str)>, StoreError> {
    let expected = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    if found > expected {
        return Err(StoreError::Schema { found, expected });
    }
    let done = usize::try_from(found).unwrap_or(0);
    Ok(migrations
        .iter()
        .enumerate()
        .skip(done)
        .map(|(i, sql)| (i64::try_from(i + 1).unwrap_or(i64::MAX), *sql)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn migrations_run_from_the_stored_version() {
        let run: Vec<_> = pending(1, &THREE).unwrap().collect();
        assert_eq!(run, [(2, "b"), (3, "c")]);
        assert_eq!(pending(3, &THREE).unwrap().count(), 0);
        assert!(matches!(
            pending(4, &THREE),
            Err(StoreError::Schema {
                found: 4,
                expected: 3
            })
        ));
    }

    #[test]
    fn a_stored_version_is_a_positive_integer() {
        assert_eq!(stored_version(Some(Some(2))).unwrap(), 2);
        assert!(matches!(
            stored_version(Some(Some(0))),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            stored_version(Some(None)),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(stored_version(None), Err(StoreError::Corrupt(_))));
    }
}
