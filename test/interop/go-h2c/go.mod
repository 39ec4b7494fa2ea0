module switchboard.test/goh2c

go 1.24
