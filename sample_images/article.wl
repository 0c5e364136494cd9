# The article's scenario: a process in the VM writes a small file and calls fsync().
#
# The disk is article.qcow2, a qcow2 image (64 KiB clusters) of an 8 MiB ext4 file system
# (4 KiB blocks, data=ordered journal) holding /article.txt (inode 12; its one data block is
# fs block 1162 = guest byte 0x48a000;
# inode 12 lives in the inode table block 34 = 0x22000; the journal is inode 8 and starts at
# fs block 8 = 0x8000).  This workload replays the block I/O that ext4 + jbd2 send for
# write(fd, buf, 136); fsync(fd) -- so every hop below the page cache can be stepped through.

# 1. fsync() starts writeback of the dirty page cache page: the file's data block.
write 0x48a000 4k
wait

# 2. jbd2 commits the transaction that changed inode 12 (size, mtime): a descriptor block
#    and the journalled copy of inode-table block 34, written into the journal (fs blocks 9
#    and 10, contiguous: blk-mq merges them into one request).
write 0x9000 4k
write 0xa000 4k
wait

# 3. The commit block is written with REQ_PREFLUSH | REQ_FUA.  virtio-blk offers no FUA, so
#    the block layer sends FLUSH, the write, and FLUSH again.
flush
wait
write 0xb000 4k
wait
flush
wait
