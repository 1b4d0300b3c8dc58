"""The data contract: ClickHouse DDL, migrations, attribute names, the store."""
