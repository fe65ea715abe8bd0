//! Generated bindings of the `palisade:plugin@0.2.0` contract: every type and every import.
//!
//! These are the wire types: strings inside events and processes are `span`s into a batch's
//! `strings` buffer. Plugins normally use the SDK's own types ([`crate::Process`],
//! [`crate::EventData`], ...), which [`crate::wire`] decodes from these.
//!
//! The exports (`describe`, `init`, `on-events` / `on-alerts`) are generated in the plugin crate
//! by [`export_detector!`](crate::export_detector) and [`export_responder!`](crate::export_responder),
//! which point their `with` mapping back here. The SDK itself must not generate a world with
//! exports: every plugin links the SDK, and the component linker would then require the exports
//! of both worlds from every plugin. The world below imports everything and exports nothing; the
//! linker drops the imports a plugin never calls (a detector does not import `actions`).

#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    inline: r#"
        package palisade:sdk;

        world imports {
            import palisade:plugin/log@0.2.0;
            import palisade:plugin/state@0.2.0;
            import palisade:plugin/clock@0.2.0;
            import palisade:plugin/actions@0.2.0;
            use palisade:plugin/types@0.2.0.{plugin-info, config, event-batch, alert, routed-alert};
        }
    "#,
    path: "../wit",
    generate_all,
    generate_unused_types: true,
    additional_derives: [PartialEq],
});

/// The raw configuration list as the host passes it to `init` (wrapped by [`crate::Config`]).
pub type RawConfig = palisade::plugin::types::Config;
