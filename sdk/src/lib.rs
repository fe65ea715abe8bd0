//! Palisade plugin SDK.
