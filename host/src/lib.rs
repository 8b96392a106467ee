//! Placeholder: filled by the agent client work.
