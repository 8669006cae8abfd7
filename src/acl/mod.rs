//! Network policy: the rule model, a compiled classifier, and connection tracking.
