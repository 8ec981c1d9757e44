-- fleetkey SQLite store, schema version 4: devices by state, in serial order.
-- A page of devices in one state (the console's and the API's state filter: "the 3 compromised
-- devices of 1,000,000") reads this index instead of every device in serial order, and the count
-- of devices by state (status, /metrics) reads the index instead of the table.

CREATE INDEX devices_by_state ON devices (state, serial);
