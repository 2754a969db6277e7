-- The ChatServer schema for MySQL/MariaDB: `mariadb -uroot < chat.sql`.
--
-- The legacy tables and columns, kept compatible and widened: utf8mb4 throughout (binary
-- collation: names compare byte for byte, case-sensitive; it ignores trailing spaces, PAD
-- SPACE, but the server accepts no name that has any), password VARCHAR(255) for argon2
-- hashes, message MEDIUMTEXT, unique keys on friend and groupuser, and an AUTO_INCREMENT
-- ordering column on offlinemessage. The server creates these tables itself if missing, and upgrades a
-- database made by the legacy script in place at start (stop legacy servers first).
-- chat/src/store/mysql_schema.rs embeds the same table definitions, and a test keeps them equal.

CREATE DATABASE IF NOT EXISTS chat CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
USE chat;

CREATE TABLE IF NOT EXISTS user (
  id INT NOT NULL AUTO_INCREMENT,
  name VARCHAR(50) NOT NULL,
  password VARCHAR(255) NOT NULL,
  state ENUM('online', 'offline') NOT NULL DEFAULT 'offline',
  PRIMARY KEY (id),
  UNIQUE KEY name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per direction: userid lists friendid as a friend (legacy semantics).
CREATE TABLE IF NOT EXISTS friend (
  userid INT NOT NULL,
  friendid INT NOT NULL,
  PRIMARY KEY (userid, friendid),
  KEY friendid (friendid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS allgroup (
  id INT NOT NULL AUTO_INCREMENT,
  groupname VARCHAR(50) NOT NULL,
  groupdesc VARCHAR(200) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  UNIQUE KEY groupname (groupname)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS groupuser (
  groupid INT NOT NULL,
  userid INT NOT NULL,
  grouprole ENUM('creator', 'normal') NOT NULL DEFAULT 'normal',
  PRIMARY KEY (groupid, userid),
  KEY userid (userid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Chat frames (JSON text) kept for offline users, delivered and deleted in id order;
-- fromid (the sender) and bytes (the message's length) bound what one recipient may
-- be sent while away, in total and per sender.
CREATE TABLE IF NOT EXISTS offlinemessage (
  id BIGINT NOT NULL AUTO_INCREMENT,
  userid INT NOT NULL,
  message MEDIUMTEXT NOT NULL,
  fromid INT NOT NULL DEFAULT 0,
  bytes INT NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  KEY userid (userid, id, bytes),
  KEY quota (userid, fromid, bytes)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every one-to-one and group message, kept with a per-conversation sequence number
-- (docs/protocol.md §10), a row per message, as servers before historychunk kept it:
-- read beside historychunk (a page merges both), and written by older nodes during a
-- rolling upgrade. conv: a group's is -groupid; a pair's is (low id << 32) | high id.
-- ts (ms since the epoch) serves retention.
CREATE TABLE IF NOT EXISTS history (
  conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  sender INT NOT NULL,
  ts BIGINT NOT NULL,
  message MEDIUMTEXT NOT NULL,
  PRIMARY KEY (conv, seq),
  KEY ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- History as this server keeps it: a writer batch's messages of one conversation,
-- seqs seq..=last, in one row. body: their texts joined by NUL bytes, LZ4-compressed
-- (codec 1: the text's length as 4 little-endian bytes, then the LZ4 block) or as
-- they are (codec 0). A HISTORY page is one range of the primary key; ts (the newest
-- message's, ms since the epoch) serves retention, which removes whole chunks.
CREATE TABLE IF NOT EXISTS historychunk (
  conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  last BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  body MEDIUMBLOB NOT NULL,
  codec TINYINT NOT NULL DEFAULT 0,
  PRIMARY KEY (conv, seq),
  KEY ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The last seq handed out per conversation (history and historychunk share it).
CREATE TABLE IF NOT EXISTS historyseq (
  conv BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  PRIMARY KEY (conv)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Friend requests waiting for an answer (fromid asked toid).
CREATE TABLE IF NOT EXISTS friendrequest (
  fromid INT NOT NULL,
  toid INT NOT NULL,
  PRIMARY KEY (fromid, toid),
  KEY toid (toid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Resume tokens (ours): a hash of each user's current token and its expiry (Unix
-- seconds); RESUME (msgid 17) logs in with the token instead of the password.
CREATE TABLE IF NOT EXISTS resumetoken (
  userid INT NOT NULL,
  hash BINARY(32) NOT NULL,
  expires BIGINT NOT NULL,
  PRIMARY KEY (userid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
