/// What went wrong in `tally-analytics`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from outside failed validation (names the field and value).
    #[error(transparent)]
    Invalid(#[from] tally_core::Error),
    /// The database failed; keeps the server's message and SQLSTATE.
    #[error(transparent)]
    Store(#[from] tally_store::Error),
}

impl Error {
    pub(crate) fn db(
        context: &'static str,
    ) -> impl FnOnce(tally_store::tokio_postgres::Error) -> Error {
        move |source| Error::Store(tally_store::Error::Db { context, source })
    }

    pub(crate) fn pool(
        context: &'static str,
    ) -> impl FnOnce(tally_store::deadpool_postgres::PoolError) -> Error {
        move |e| match e {
            tally_store::deadpool_postgres::PoolError::Backend(source) => {
                Error::Store(tally_store::Error::Db { context, source })
            }
            other => Error::Store(tally_store::Error::Pool {
                context,
                message: other.to_string(),
            }),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
