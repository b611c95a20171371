-- The cluster profile's gateway keeps its metadata apart from the single-node gateway's: its
-- collections live in the 3-node Qdrant cluster. Runs once, when the postgres volume is created.
CREATE DATABASE citadel_cluster OWNER citadel;
