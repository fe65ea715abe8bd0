//! TODO(skeleton): filled in by the core platform work.
