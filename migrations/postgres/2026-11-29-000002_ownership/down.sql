DROP TABLE partition_owners;
DROP TABLE bus_members;
