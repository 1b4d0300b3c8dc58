-- The detectors tail agent_spans and credential_events by block number (the order in which inserts
-- commit), not by IngestedAt (the time an insert started): each row keeps its insert's block number
-- through merges. Rows written before this migration read as their part's first block number.
ALTER TABLE {db}.agent_spans MODIFY SETTING enable_block_number_column = 1;
ALTER TABLE {db}.credential_events MODIFY SETTING enable_block_number_column = 1
