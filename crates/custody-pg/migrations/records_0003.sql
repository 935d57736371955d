-- The egress gateway's differential-privacy budget: epsilon spent per export destination,
-- shared by every node (and surviving the loss of any one), never refunded.
CREATE TABLE IF NOT EXISTS egress_budget (
    destination text COLLATE "C" PRIMARY KEY,
    spent double precision NOT NULL CHECK (spent >= 0)
);
