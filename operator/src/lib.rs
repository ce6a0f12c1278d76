//! The Portcullis operator: watches the four CRDs, compiles them with
//! `portcullis-compiler`, publishes the config and writes status.
//!
//! Not built yet: it arrives with the operator issue (#3). The crate exists so the workspace
//! has its final shape; it deliberately ships no binary until it does something.
