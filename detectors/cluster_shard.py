"""Which node a detector shard reads on a ClickHouse cluster, and the check that it is the right one.

On a cluster the typed rows are sharded by `cityHash64(Tenant)` over shards of
weight 1 (schemas/cluster.py): cluster shard k+1 holds exactly the tenants of
detector shard k/N when N is the number of shards. So detector shard k reads
the local tables of a node of shard k+1, and only that node: block ranges and
part lists are a replica's own, so every query must reach the same replica
(`AGENTWATCH_DETECTOR_CLICKHOUSE_DSN` names it, `{shard}` standing for k; a load
balancer in front of several nodes will not do). The check runs on every new
connection and refuses, with what to change, anything else.

    >>> shard_dsn("clickhouse://detector@chi-aw-main-{shard}-0:8123/agentwatch", 2)
    'clickhouse://detector@chi-aw-main-2-0:8123/agentwatch'
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client


class WrongShard(RuntimeError):
    """The detector is connected to a node whose rows are not its tenants'."""


def shard_dsn(template: str, index: int) -> str:
    return template.replace("{shard}", str(index))


def check_cluster_shard(client: Client, cluster: str, shard: tuple[int, int]) -> str:
    """Raise WrongShard unless `client` is connected to a node of cluster shard k+1 of N equal shards.

    Returns the node's host name.
    """
    k, n = shard
    rows = client.query("SELECT shard_num, shard_weight, is_local FROM system.clusters WHERE cluster = {c:String}",
                        parameters={"c": cluster}).result_rows
    if not rows:
        raise WrongShard(f"this node has no cluster {cluster!r} in remote_servers "
                         "(AGENTWATCH_CLICKHOUSE_CLUSTER must name the cluster the schema was rendered for)")
    shards = {int(r[0]) for r in rows}
    if len(shards) != n:
        raise WrongShard(f"cluster {cluster!r} has {len(shards)} shards, the detectors run {n} "
                         f"(--shard k/{len(shards)}: one detector shard per cluster shard)")
    if any(int(r[1]) != 1 for r in rows):
        raise WrongShard(f"cluster {cluster!r} has shards of weight other than 1: detector shard k holds "
                         "cityHash64(Tenant) % N = k only over shards of equal weight")
    here = sorted({int(r[0]) for r in rows if r[2]})
    host = str(client.query("SELECT hostName()").result_rows[0][0])
    if here != [k + 1]:
        where = f"shard {here[0]}" if len(here) == 1 else "no shard" if not here else f"shards {here}"
        raise WrongShard(f"detector shard {k}/{n} reads cluster shard {k + 1}, but {host} is {where} of "
                         f"{cluster!r}: point AGENTWATCH_DETECTOR_CLICKHOUSE_DSN at a node of shard {k + 1} "
                         "(`{shard}` in it stands for k)")
    return host
