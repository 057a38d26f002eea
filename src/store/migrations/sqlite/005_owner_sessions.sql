-- Signing out: an owner token carries the owner's token epoch at login, and is refused once
-- the epoch has moved on, so one sign-out ends every token the owner holds.
ALTER TABLE owners ADD COLUMN token_epoch BIGINT NOT NULL DEFAULT 0;
