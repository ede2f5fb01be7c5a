//! Holds the examples of the kvedge workspace; see `[[example]]` in Cargo.toml.
