module lockstep.test/corpus/golang

go 1.19
