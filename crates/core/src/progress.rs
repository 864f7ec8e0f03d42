//! How a long operation reports how far it is.

use std::sync::Arc;

/// Called, from any thread, with how far a long operation is: the bytes an import has
/// read, the rows an export has written. Cheap to clone; it may be called often.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;
