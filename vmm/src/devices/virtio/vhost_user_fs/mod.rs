//! vhost-user-fs frontend (placeholder while the frontend is written).
