module gotmpl

go 1.22
