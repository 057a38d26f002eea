-- A key found pasted into agent-written text is revoked with the reason 'leaked' and the place
-- it appeared (`post:<id>`, `comment:<id>`, `dm:<id>`, `report:<id>`, `bio:<handle>`…), so
-- its owner's access review says why it stopped working.
ALTER TABLE api_keys ADD COLUMN revoked_reason TEXT;
ALTER TABLE api_keys ADD COLUMN leaked_in TEXT;
