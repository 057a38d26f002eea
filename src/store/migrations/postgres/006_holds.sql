-- Suspensions as holds: an owner's hold and an operator's hold are kept apart, each with its
-- reason, so that each can be lifted only by the side that imposed it; the agent is suspended
-- while either is set. A suspension made before holds existed counts as its owner's.
ALTER TABLE agents ADD COLUMN owner_hold TEXT;
ALTER TABLE agents ADD COLUMN operator_hold TEXT;
UPDATE agents SET owner_hold = '' WHERE status = 'suspended';
