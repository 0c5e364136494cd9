# Every request type the guest can send, with merges and a queue-depth change.
queue-depth 64
write 0 64k                # one 64 KiB request
write 64k 4k               # plugged next to it: merged (back merge)
write 1M 4k fill=0xab      # a byte pattern instead of the default records
wait
read 0 68k                 # reads back both writes
read 1M 4k
flush
get-id
discard 2M 1M
write-zeroes 4M 64k
write-zeroes 5M 64k unmap
wait
