"""Cross-checks: resources of a whole directory checked against each other, incrementally.

Duplicates across files, host names claimed twice, rules for unknown hosts, destinations
naming unknown services, ports or subsets, two rules for one service, one virtual
address pinned by two services whose TCP ports collide. ServiceEntries
become services here (one per host, ``service_entry.entry_services``), with the
WorkloadEntries they select, and take part in every check like the services of files.

How this works: ``CrossCheck`` (``directory``) holds what the checks of the whole
directory found, with the indexes they were found with: every definition of every key
(the first in file order wins, later ones are duplicates), the owner of every host name,
the service each DestinationRule resolves to, and what each VirtualService looked up
(host names, the DestinationRules of services). ``update`` is given the files that
changed (their old and new contents); it recomputes the winners of the keys those files
define, then only what depends on a changed winner, a changed host owner or a changed
DestinationRule (a changed ServiceEntry, or a changed WorkloadEntry in the namespace of
an entry with a ``workloadSelector``, derives that entry's services again: those that
compare equal keep their objects), and keeps every problem filed under what it belongs
to (a file, a key, a service, a rule). The problems come out sorted the way one pass
over the whole directory emits them, so a directory gives the same mesh and the same
problems, in the same order, whatever sequence of updates led to it
(``tests/sources/test_crosscheck.py`` holds the one-pass reference). Everything not
affected keeps its objects: a VirtualService that was not checked again is the very same
object in the next mesh.

One module per concern, each holding its own indexes: ``definitions`` (winners and
duplicates by key), ``entries`` (services derived from ServiceEntries), ``hosts`` (the
owner of each host name), ``rules`` (the DestinationRule applied to each service),
``addresses`` (one virtual address pinned by two services a connection to it cannot tell
apart), ``virtual_services`` (checked VirtualServices, what they looked up, overlaps; the check
of one rule itself is ``routes``), ``gateways`` (Gateways named by VirtualServices),
``authorization`` (AuthorizationPolicies' HTTP-only fields on TCP/TLS ports),
``jwt_issuers`` (one issuer in two RequestAuthentications of one workload).
``directory.CrossCheck`` composes them in that order and builds the mesh.
"""
