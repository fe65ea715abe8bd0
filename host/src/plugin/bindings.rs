//! The only `bindgen!` calls: host bindings for the `detector` and `responder` worlds of
//! `wit/plugin.wit`. The responder reuses the detector's generated types and imports so the
//! host implements each import interface once.

pub mod detector {
    wasmtime::component::bindgen!({
        world: "detector",
        path: "../wit",
    });
}

pub mod responder {
    wasmtime::component::bindgen!({
        world: "responder",
        path: "../wit",
        with: {
            "palisade:plugin/types": super::detector::palisade::plugin::types,
            "palisade:plugin/log": super::detector::palisade::plugin::log,
            "palisade:plugin/state": super::detector::palisade::plugin::state,
            "palisade:plugin/clock": super::detector::palisade::plugin::clock,
        },
    });
}

pub use detector::palisade::plugin::{clock, log, state, types};
pub use responder::palisade::plugin::actions;
