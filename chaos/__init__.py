"""The chaos suite: a Toxiproxy-compatible fault proxy, fault schedules, workloads, the checker."""
