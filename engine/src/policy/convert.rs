//! Between the model and the wasmtime bindings' WIT types: the
//! conversions every glue shares (`attrelay_policy::wit_conversions!`).

use super::bindings::types as wit;

attrelay_policy::wit_conversions!(pub(crate) wit);
