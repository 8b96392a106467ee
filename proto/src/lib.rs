//! Placeholder: filled by the agent API work.
